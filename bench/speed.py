"""Speed goals of the default benchmark, measured (not asserted in tests: machines are noisy).

    python bench/speed.py                                   # CPU: bench/results/speed_cpu_*.json
    python bench/speed.py --device cuda --skip-default-run  # the fit comparison on a GPU

1. Wall time of the default `python main.py` (goal: at most 90 s on a 2-core CPU).
2. The closed-form `data_aware` fit on the shipped embeddings against 1000 distillation steps,
   timed in the same process (goal: well under a second, and at least 20x faster).
3. The `task_aware` fit (G from the head's Jacobian, S, the decomposition) beside `data_aware`,
   interleaved in the same loop (goal: at most 3x the data_aware fit).
On CUDA the device is synchronised before every clock read.
"""

from __future__ import annotations

import argparse
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
from distil_rank.timing import device_name, environment  # noqa: E402


def time_default_run() -> float:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run([sys.executable, "main.py", "--out", out], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
        return time.perf_counter() - start


def _seconds(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def time_fits(device: torch.device, repeats: int = 7, steps: int | None = None) -> dict:
    cfg = Config()
    x = load_embeddings(ROOT / cfg.train_path).embeddings.to(device)
    dim = x.shape[1]
    rank = dim // cfg.rank_divisor
    teacher = random_teacher(dim, seed=0).to(device)
    settings = cfg.settings(DistillSettings)
    if steps is not None:
        settings = replace(settings, steps=steps)
    g = torch.Generator().manual_seed(0)
    readout = nn.Sequential(nn.GELU(), seeded_linear(dim, 1, g)).requires_grad_(False).to(device)
    context = FitContext(BenchmarkData(train=x, fit=x, selection=x, val=x), settings, device,
                         seed=0, readout=readout, damping=cfg.task_damping)
    closed_form, given_moments, task_aware = [], [], []
    moments = input_moments(x)
    for _ in range(repeats):  # interleaved, so that a busy moment hits every method alike
        closed_form.append(_seconds(lambda: fit_data_aware(teacher, rank, context), device))
        task_aware.append(_seconds(lambda: fit_task_aware(teacher, rank, context), device))
        given_moments.append(_seconds(lambda: compress_data_aware(teacher, moments, rank), device))
    distill(teacher, compress_svd(teacher, rank), x, replace(settings, steps=10), seed=0,
            device=device)  # one-time costs out
    distill_s = _seconds(lambda: distill(teacher, compress_svd(teacher, rank), x, settings,
                                         seed=0, device=device), device)
    data_aware_s = statistics.median(closed_form)
    return {
        "device": device_name(device),
        "rows": x.shape[0], "dim": dim, "rank": rank,
        "data_aware_seconds_median": data_aware_s,
        "data_aware_seconds_all": closed_form,
        "data_aware_given_moments_seconds_median": statistics.median(given_moments),
        "distill_steps": settings.steps,
        "distill_seconds": distill_s,
        "ratio_distill_over_data_aware": distill_s / data_aware_s,
        "ratio_distill_over_data_aware_given_moments":
            distill_s / statistics.median(given_moments),
        "task_aware_seconds_median": statistics.median(task_aware),
        "task_aware_seconds_all": task_aware,
        "ratio_task_aware_over_data_aware": statistics.median(task_aware) / data_aware_s,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--skip-default-run", action="store_true",
                   help="only the fit comparison (the default run's time is a CPU goal)")
    p.add_argument("--repeats", type=int, default=7, help="timed fits of each closed form")
    p.add_argument("--steps", type=int, default=None, help="distillation steps (default: 1000)")
    p.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda: CUDA is not available on this machine")
    report = {"environment": environment(device),
              "fits": time_fits(device, args.repeats, args.steps)}
    if not args.skip_default_run:
        report["default_run_seconds"] = time_default_run()
    slug = re.sub(r"[^a-z0-9]+", "-", device_name(device).lower()).strip("-")[:40]
    threads = f"_{torch.get_num_threads()}t" if device.type == "cpu" else ""
    path = Path(args.out_dir) / f"speed_{device.type}_{slug.removeprefix('cpu-')}{threads}.json"
    write_json(path, report)
    fits = report["fits"]
    if "default_run_seconds" in report:
        print(f"default python main.py: {report['default_run_seconds']:.1f} s")
    print(f"data_aware fit: {fits['data_aware_seconds_median'] * 1e3:.1f} ms (median of "
          f"{len(fits['data_aware_seconds_all'])}); {fits['distill_steps']} distillation steps: "
          f"{fits['distill_seconds']:.2f} s; ratio {fits['ratio_distill_over_data_aware']:.0f}x "
          f"({fits['ratio_distill_over_data_aware_given_moments']:.0f}x given the moments)")
    print(f"task_aware fit: {fits['task_aware_seconds_median'] * 1e3:.1f} ms, "
          f"{fits['ratio_task_aware_over_data_aware']:.2f}x the data_aware fit")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
