"""Speed goals of the default benchmark, measured (not asserted in tests: machines are noisy).

    python bench/speed.py                                   # CPU: bench/results/speed_cpu_*.json
    python bench/speed.py --device cuda --skip-default-run  # the fit comparison on a GPU

1. Wall time of the default `python main.py` (goal: at most 90 s on a 2-core CPU).
2. The closed-form `data_aware` fit on the shipped embeddings against 1000 distillation steps,
   timed in the same process (goal: well under a second, and at least 20x faster).
3. The `task_aware` fit (G from the head's Jacobian, S, the decomposition) beside `data_aware`,
   interleaved in the same loop (goal: at most 3x the data_aware fit).
4. Twelve students distilled together (`distill_together`) against one by one (`distill`), at
   320-d rank 16 (the shipped embeddings) and 1280-d rank 64 (synthetic), and twelve students of
   the default sweep's ranks (4 .. 80) stacked as the trainer does (grouped by rank) against all
   zero-padded to rank 80 in one stack (padding is exact: padded factors get zero gradients).
On CUDA the device is synchronised before every clock read.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from distil_rank.benchmark.compressors import (
    BenchmarkData,
    FitContext,
    FitMemo,
    fit_data_aware,
    fit_task_aware,
)
from distil_rank.benchmark.config import Config
from distil_rank.benchmark.data import synthetic_embeddings
from distil_rank.benchmark.latency import device_name, environment, name_slug
from distil_rank.benchmark.teachers import random_teacher
from distil_rank.distill import DistillJob, distill, distill_together
from distil_rank.embeddings import load_embeddings
from distil_rank.errors import InputError, OneLineParser, at_least
from distil_rank.files import writable_folder, write_json
from distil_rank.kernels.clock import time_calls
from distil_rank.lowrank import (
    LowRankLinear,
    compress_data_aware,
    compress_svd,
    seeded_linear,
)
from distil_rank.moments import input_moments
from distil_rank.runtime import add_threads_option, apply_threads, freeze_imports, resolve_device

ROOT = Path(__file__).resolve().parents[1]


def time_default_run() -> float:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run([sys.executable, "main.py", "--out", out], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
        return time.perf_counter() - start


def _seconds(fn, device: torch.device) -> float:
    """One call of fn(), on the project's one clock (CUDA events on a GPU)."""
    return time_calls(fn, device, 1)[0] / 1e3


def time_fits(device: torch.device, repeats: int = 7, steps: int | None = None) -> dict:
    cfg = Config()
    x = load_embeddings(ROOT / cfg.train_path).embeddings.to(device)
    dim = x.shape[1]
    rank = dim // cfg.rank_divisor
    teacher = random_teacher(dim, seed=0).to(device)
    settings = cfg.distill
    if steps is not None:
        settings = replace(settings, steps=steps)
    g = torch.Generator().manual_seed(0)
    readout = nn.Sequential(nn.GELU(), seeded_linear(dim, 1, g)).requires_grad_(False).to(device)
    context = FitContext(BenchmarkData(train=x, fit=x, selection=x, val=x), settings, device,
                         seed=0, readout=readout, damping=cfg.task_damping)
    closed_form, given_moments, task_aware = [], [], []
    moments = input_moments(x)
    for _ in range(repeats):  # interleaved, so that a busy moment hits every method alike
        # each fit with an empty memo: one sharing the first's would time a cache lookup
        closed_form.append(_seconds(partial(fit_data_aware, teacher, rank,
                                            replace(context, memo=FitMemo())), device))
        task_aware.append(_seconds(partial(fit_task_aware, teacher, rank,
                                           replace(context, memo=FitMemo())), device))
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


def _padded(student: LowRankLinear, rank: int) -> LowRankLinear:
    """The same layer at a larger rank, the extra factors zero."""
    extra = rank - student.rank
    return LowRankLinear.from_factors(F.pad(student.up.detach(), (0, extra)),
                                      F.pad(student.down.detach(), (0, 0, 0, extra)),
                                      student.bias.detach())


def _seeded_student(dim: int, rank: int, seed: int) -> LowRankLinear:
    return LowRankLinear(dim, dim, rank, generator=torch.Generator().manual_seed(seed))


def _one_by_one(jobs: list[DistillJob], device: torch.device) -> None:
    for j in jobs:
        distill(j.teacher, j.student, j.train_x, j.settings, seed=j.seed, device=device)


def time_batched(device: torch.device, steps: int, students: int = 12,
                 rows: int | None = None) -> dict:
    """Seconds to distil `students` students one by one and together, each with its own teacher
    and seed, on the published recipe's settings (no held-out rows: every step runs), on the
    first `rows` rows of each case's data (all when None)."""
    cfg = Config()
    settings = replace(cfg.distill, steps=steps)
    shipped = load_embeddings(ROOT / cfg.train_path).embeddings
    synthetic = synthetic_embeddings(n_train=4000, n_val=10, dim=1280, latent_dim=48, seed=0)[0]
    report = {"students": students, "steps": steps, "rows": rows}
    cases = {"320d_r16": (shipped, [16] * students), "1280d_r64": (synthetic.embeddings,
                                                                   [64] * students),
             "320d_sweep_ranks": (shipped, [4, 8, 16, 32, 64, 80] * (students // 6))}
    for name, (x, ranks) in cases.items():
        x = x[:rows].to(device)
        teachers = [random_teacher(x.shape[1], seed=i).to(device) for i in range(students)]
        # seeded factors as the warm start: with no held-out rows every step runs, and a step
        # takes the same time from any start (a 1280-d SVD each took longer than the steps)
        jobs = [DistillJob(t, _seeded_student(x.shape[1], r, i).to(device), x, settings, seed=i)
                for i, (t, r) in enumerate(zip(teachers, ranks))]
        distill_together(jobs[:2], device)  # one-time costs out
        together = _seconds(partial(distill_together, jobs, device), device)
        if name.endswith("sweep_ranks"):
            padded = [replace(j, student=_padded(j.student, max(ranks))) for j in jobs]
            report[name] = {"grouped_by_rank_seconds": together,
                            "padded_to_max_rank_seconds":
                                _seconds(partial(distill_together, padded, device), device)}
            continue
        alone = _seconds(partial(_one_by_one, jobs, device), device)
        report[name] = {"one_by_one_seconds": alone, "together_seconds": together,
                        "speedup": alone / together}
    return report


def main() -> None:
    p = OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--skip-default-run", action="store_true",
                   help="only the fit comparison (the default run's time is a CPU goal)")
    p.add_argument("--repeats", type=at_least(1), default=7, help="timed fits of each closed form")
    p.add_argument("--steps", type=at_least(1), default=None,
                   help="distillation steps (default: 1000)")
    p.add_argument("--batched-steps", type=at_least(1), default=300,
                   help="steps per student in the batched comparison")
    p.add_argument("--students", type=at_least(6), default=12,
                   help="students trained together in the batched comparison (a multiple of 6)")
    p.add_argument("--rows", type=at_least(64), default=None,
                   help="training rows of each batched case (default: all; a step draws 64)")
    p.add_argument("--out-dir", type=writable_folder, default=str(ROOT / "bench" / "results"))
    add_threads_option(p)
    args = p.parse_args()
    if args.students % 6:
        p.error(f"--students {args.students}: a multiple of 6 (the sweep's six ranks)")
    try:
        device = resolve_device(args.device)
    except InputError as err:
        p.exit(2, f"error: {err}\n")
    apply_threads(args.threads)
    report = {"environment": environment(device),
              "fits": time_fits(device, args.repeats, args.steps),
              "batched": time_batched(device, args.batched_steps, args.students, args.rows)}
    if not args.skip_default_run:
        report["default_run_seconds"] = time_default_run()
    slug = name_slug(device_name(device), 40)
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
    batched = report["batched"]
    for case in ("320d_r16", "1280d_r64"):
        print(f"{batched['students']} students at {case}, {batched['steps']} steps: one by one "
              f"{batched[case]['one_by_one_seconds']:.2f} s, together "
              f"{batched[case]['together_seconds']:.2f} s ({batched[case]['speedup']:.2f}x)")
    sweep = batched["320d_sweep_ranks"]
    print(f"ranks 4..80 stacked: grouped by rank {sweep['grouped_by_rank_seconds']:.2f} s, "
          f"zero-padded to rank 80 {sweep['padded_to_max_rank_seconds']:.2f} s")
    print(f"wrote {path}")


if __name__ == "__main__":
    freeze_imports()
    main()
