"""The Task-Trained teacher's recipe, ablated: which recipe gives the published row, and why.

    python scripts/task_trained_ablation.py           # writes reference/task_trained_ablation.json
    python scripts/task_trained_ablation.py --quick   # tiny data and steps: checks the plumbing

For each recipe (initialisation scale x AdamW weight decay x steps of the denoising task), on the
published setting (1280-d synthetic, rank 64) and on the shipped TEM-1 embeddings (320-d, rank
16), seed 0 of the benchmark's teachers: the rank-r SVD's cosine and explained variance on
validation, the closed form's explained variance, the published recipe's student cosine (SVD
start, 1000 steps, every student trained together), and what explains them: the share of the
teacher weight's energy ||W||_F^2 outside the span of the data (the principal directions that
hold 99% of the training embeddings' variance), which no denoising gradient asks for, and the
share of ||W||_F^2 beyond its own top r singular values, which the SVD throws away.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import torch

from distil_rank.benchmark.config import QUICK, Config, preset_overrides
from distil_rank.benchmark.latency import environment
from distil_rank.benchmark.pipeline import load_data, resolve_rank
from distil_rank.benchmark.teachers import task_trained_teacher, teacher_seed
from distil_rank.distill import DistillJob, distill_together
from distil_rank.errors import InputError, OneLineParser
from distil_rank.files import check_writable_file, write_json
from distil_rank.lowrank import compress_data_aware, compress_svd
from distil_rank.metrics import (
    energy_outside_data_span,
    fidelity,
    svd_discarded_energy,
)
from distil_rank.moments import input_moments
from distil_rank.runtime import stage_seed

ROOT = Path(__file__).resolve().parents[1]

INITS, WEIGHT_DECAYS, STEPS = ("default", "small", "zero"), (0.0, 1.0), (500, 2000)


def ablate(config: Config, recipes, steps: int | None) -> list[dict]:
    """Every recipe on one setting's data: the teachers first, then the published recipe's
    students of all of them together."""
    dataset = load_data(config)
    train, val = dataset.train.embeddings, dataset.val.embeddings
    rank = resolve_rank(config.rank, train.shape[1], config.rank_divisor)
    seed = teacher_seed(config.seed, "Task-Trained")
    rows, jobs = [], []
    distil = config.distill if steps is None else replace(config.distill, steps=steps)
    for init, weight_decay, teacher_steps in recipes:
        settings = replace(config.teacher, init=init, weight_decay=weight_decay,
                           steps=teacher_steps)
        teacher, losses = task_trained_teacher(train, settings, seed)
        with torch.no_grad():
            y = teacher(val)
            svd = fidelity(y, compress_svd(teacher, rank)(val))
            closed = fidelity(y, compress_data_aware(teacher, input_moments(train), rank)(val))
        rows.append({"init": init, "weight_decay": weight_decay, "teacher_steps": teacher_steps,
                     "denoising_loss_last": losses[-1], "svd_cosine": svd["cosine"],
                     "svd_explained_variance": svd["explained_variance"],
                     "data_aware_explained_variance": closed["explained_variance"],
                     "energy_outside_data_span": energy_outside_data_span(teacher.weight, train),
                     "svd_discarded_energy": svd_discarded_energy(teacher.weight, rank)})
        jobs.append(DistillJob(teacher, compress_svd(teacher, rank), train, distil,
                               stage_seed(seed, "distil")))
    for row, run, job in zip(rows, distill_together(jobs, torch.device("cpu")), jobs):
        with torch.no_grad():
            row["distil_cosine"] = fidelity(job.teacher(val), run.student(val))["cosine"]
    return {"data": dataset.note, "input_dim": train.shape[1], "rank": rank,
            "distil_steps": distil.steps, "recipes": rows}


def main() -> None:
    p = OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny data and steps (not to be cited)")
    p.add_argument("--out", default=str(ROOT / "reference" / "task_trained_ablation.json"))
    args = p.parse_args()
    try:  # now, not after the work
        check_writable_file(args.out, "--out", (".json",))
    except InputError as err:
        p.refuse(err)
    recipes = list(itertools.product(INITS, WEIGHT_DECAYS, STEPS))
    settings = {"published-1280d": Config().updated(preset_overrides("published")),
                "tem1-320d": Config()}
    steps = None
    if args.quick:
        quick = {k: v for k, v in QUICK.items() if k.startswith("synthetic")}
        settings = {name: replace(c, **quick, rank=8 if c.rank else None)
                    for name, c in settings.items()}
        recipes, steps = [(i, w, 20) for i, w, _ in recipes[::2]], 20
    report = {"settings": {name: ablate(c, recipes, steps) for name, c in settings.items()},
              "environment": environment(torch.device("cpu"))}
    write_json(Path(args.out), report)
    for name, result in report["settings"].items():
        print(f"{name} (rank {result['rank']}):")
        for r in result["recipes"]:
            print(f"  init {r['init']:<7} wd {r['weight_decay']:<4} steps {r['teacher_steps']:<5}"
                  f" svd cos {r['svd_cosine']:.4f} svd EV {r['svd_explained_variance']:.4f} "
                  f"closed EV {r['data_aware_explained_variance']:.4f} "
                  f"distil cos {r['distil_cosine']:.4f} "
                  f"off-data {r['energy_outside_data_span']:.3f} "
                  f"beyond rank {r['svd_discarded_energy']:.3f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
