"""Speed goals of the default benchmark, measured (not asserted in tests: machines are noisy).

    python bench/speed.py            # writes bench/results/speed_<device>.json

1. Wall time of the default `python main.py` (goal: at most 90 s on a 2-core CPU).
2. The closed-form `data_aware` fit on the shipped embeddings against 1000 distillation steps,
   timed in the same process (goal: well under a second, and at least 20x faster).
3. The `task_aware` fit (G from the head's Jacobian, S, the decomposition) beside `data_aware`,
   interleaved in the same loop (goal: at most 3x the data_aware fit).
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distil_rank.benchmark import (  # noqa: E402
    BenchmarkData,
    FitContext,
    fit_data_aware,
    fit_task_aware,
)
from distil_rank.config import Config  # noqa: E402
from distil_rank.data import load_embeddings  # noqa: E402
from distil_rank.distill import DistillSettings, distill  # noqa: E402
from distil_rank.lowrank import compress_data_aware, compress_svd, seeded_linear  # noqa: E402
from distil_rank.moments import input_moments  # noqa: E402
from distil_rank.report import write_json  # noqa: E402
from distil_rank.teachers import random_teacher  # noqa: E402
from distil_rank.timing import environment  # noqa: E402


def time_default_run() -> float:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run([sys.executable, "main.py", "--out", out], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
        return time.perf_counter() - start


def time_fits(repeats: int = 7) -> dict:
    cfg = Config()
    x = load_embeddings(ROOT / cfg.train_path).embeddings
    dim = x.shape[1]
    rank = dim // cfg.rank_divisor
    teacher = random_teacher(dim, seed=0)
    settings = cfg.settings(DistillSettings)
    cpu = torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    readout = nn.Sequential(nn.GELU(), seeded_linear(dim, 1, g)).requires_grad_(False)
    context = FitContext(BenchmarkData(train=x, fit=x, selection=x, val=x), settings, cpu,
                         seed=0, readout=readout, damping=cfg.task_damping)
    closed_form, given_moments, task_aware = [], [], []
    moments = input_moments(x)
    for _ in range(repeats):
        closed_form.append(fit_data_aware(teacher, rank, context).fit_seconds)  # moments included
        task_aware.append(fit_task_aware(teacher, rank, context).fit_seconds)  # G, S, decomposition
        start = time.perf_counter()
        compress_data_aware(teacher, moments, rank)  # moments shared across teachers and ranks
        given_moments.append(time.perf_counter() - start)
    distill(teacher, compress_svd(teacher, rank), x, replace(settings, steps=10), seed=0,
            device=cpu)  # one-time costs out
    result = distill(teacher, compress_svd(teacher, rank), x, settings, seed=0, device=cpu)
    data_aware_s = statistics.median(closed_form)
    return {
        "rows": x.shape[0], "dim": dim, "rank": rank,
        "data_aware_seconds_median": data_aware_s,
        "data_aware_seconds_all": closed_form,
        "data_aware_given_moments_seconds_median": statistics.median(given_moments),
        "distill_steps": cfg.steps,
        "distill_seconds": result.fit_seconds,
        "ratio_distill_over_data_aware": result.fit_seconds / data_aware_s,
        "ratio_distill_over_data_aware_given_moments":
            result.fit_seconds / statistics.median(given_moments),
        "task_aware_seconds_median": statistics.median(task_aware),
        "task_aware_seconds_all": task_aware,
        "ratio_task_aware_over_data_aware": statistics.median(task_aware) / data_aware_s,
    }


def main() -> None:
    report = {"environment": environment(torch.device("cpu")), "fits": time_fits(),
              "default_run_seconds": time_default_run()}
    slug = re.sub(r"[^a-z0-9]+", "-", report["environment"]["cpu"].lower()).strip("-")[:40]
    path = ROOT / "bench" / "results" / f"speed_cpu_{slug}_{torch.get_num_threads()}t.json"
    write_json(path, report)
    fits = report["fits"]
    print(f"default python main.py: {report['default_run_seconds']:.1f} s")
    print(f"data_aware fit: {fits['data_aware_seconds_median'] * 1e3:.1f} ms (median of "
          f"{len(fits['data_aware_seconds_all'])}); {fits['distill_steps']} distillation steps: "
          f"{fits['distill_seconds']:.2f} s; ratio {fits['ratio_distill_over_data_aware']:.0f}x "
          f"({fits['ratio_distill_over_data_aware_given_moments']:.0f}x given the moments)")
    print(f"task_aware fit: {fits['task_aware_seconds_median'] * 1e3:.1f} ms, "
          f"{fits['ratio_task_aware_over_data_aware']:.2f}x the data_aware fit")
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
