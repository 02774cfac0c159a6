"""One teacher through every compressor, measured: the unit of work of a benchmark run."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from distil_rank.distill import DistillResult, distill
from distil_rank.lowrank import (
    compress_data_aware,
    compress_svd,
    data_aware_error_curve,
    flop_ratio,
    input_moments,
    num_parameters,
)
from distil_rank.metrics import fidelity, fit_ridge, spearman
from distil_rank.stats import smallest_rank_reaching
from distil_rank.timing import measure_latency

METHODS = ("svd", "data_aware", "distil", "distil_da")
SWEEP_METHODS = ("svd", "data_aware", "distil_da")
STUDENT = "distil_da"  # the project's student: its numbers fill the published keys


@dataclass(frozen=True)
class DistillSettings:
    steps: int
    lr: float
    batch_size: int
    alpha: float
    weight_decay: float
    eval_every: int


@dataclass(frozen=True)
class LatencySettings:
    batch: int
    warmup: int
    repeats: int


@dataclass
class Inputs:
    """The tensors a teacher is compressed and judged on (all on the CPU)."""

    train: torch.Tensor  # all training embeddings
    fit: torch.Tensor  # training rows distil_da learns from
    selection: torch.Tensor  # training rows held out to pick distil_da's checkpoint
    val: torch.Tensor  # validation embeddings: every reported fidelity figure
    train_fitness: torch.Tensor | None
    val_fitness: torch.Tensor | None


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def distil_da(teacher: nn.Linear, inputs: Inputs, rank: int, distill_cfg: DistillSettings,
              device: torch.device, seed: int, name: str = ""):
    """The project's student: the closed form fitted on the fit rows, distilled on them, and the
    checkpoint (step 0 included) with the least MSE on the held-out selection rows."""
    warm, warm_seconds = _timed(lambda: compress_data_aware(teacher, input_moments(inputs.fit), rank))
    run = distill(teacher, warm, inputs.fit, steps=distill_cfg.steps, lr=distill_cfg.lr,
                  batch_size=distill_cfg.batch_size, alpha=distill_cfg.alpha,
                  weight_decay=distill_cfg.weight_decay, device=device, seed=seed,
                  holdout_x=inputs.selection, eval_every=distill_cfg.eval_every,
                  desc=f"{name} distil_da r={rank}")
    return run, (run.student, warm_seconds + run.fit_seconds, {
        "chosen_step": run.chosen_step,
        "selection_mse_warm_start": run.checkpoints[0][1],
        "selection_mse_chosen": min(m for _, m in run.checkpoints),
        "warm_start": warm,
    })


def compress_teacher(teacher: nn.Linear, inputs: Inputs, rank: int, distill_cfg: DistillSettings,
                     device: torch.device, seed: int, name: str = ""):
    """Every compressor applied to `teacher`: {method: (module, fit_seconds, extra)} and the
    distillation results for the loss curves."""
    students, runs = {}, {}
    svd_student, seconds = _timed(lambda: compress_svd(teacher, rank))
    students["svd"] = (svd_student, seconds, {})
    da_student, seconds = _timed(lambda: compress_data_aware(teacher, input_moments(inputs.train), rank))
    students["data_aware"] = (da_student, seconds, {})

    # The published recipe, kept as the reference row: SVD warm start, all training rows,
    # the weights after the last step.
    runs["distil"] = distill(teacher, svd_student, inputs.train, steps=distill_cfg.steps,
                             lr=distill_cfg.lr, batch_size=distill_cfg.batch_size,
                             alpha=distill_cfg.alpha, weight_decay=distill_cfg.weight_decay,
                             device=device, seed=seed, desc=f"{name} distil")
    students["distil"] = (runs["distil"].student, runs["distil"].fit_seconds, {})
    runs["distil_da"], students["distil_da"] = distil_da(teacher, inputs, rank, distill_cfg, device,
                                                         seed=seed + 1, name=name)
    return students, runs


@torch.no_grad()
def measure_teacher(teacher: nn.Linear, students: dict, inputs: Inputs, rank: int,
                    latency: LatencySettings, device: torch.device, ridge_alpha: float) -> dict:
    """Fidelity on validation, downstream Spearman, sizes and latency, as plain numbers."""
    cpu = torch.device("cpu")
    teacher = teacher.to(cpu)
    y_val = teacher(inputs.val)
    dim_in, dim_out = teacher.in_features, teacher.out_features
    probe = None
    if inputs.train_fitness is not None and inputs.val_fitness is not None:
        probe = fit_ridge(teacher(inputs.train), inputs.train_fitness, ridge_alpha)

    methods = {}
    for method, (module, seconds, extra) in students.items():
        module = module.to(cpu)
        y_hat = module(inputs.val)
        entry = fidelity(y_val, y_hat)
        entry["fit_seconds"] = seconds
        entry["params"] = num_parameters(module)
        entry["rank"] = rank
        if probe is not None:
            entry["spearman"] = spearman(probe(y_hat), inputs.val_fitness)
        for key, value in extra.items():
            if key == "warm_start":
                entry["warm_start_val"] = fidelity(y_val, value.to(cpu)(inputs.val))
            else:
                entry[key] = value
        methods[method] = entry

    student = students[STUDENT][0]
    lat_teacher = measure_latency(teacher, latency.batch, dim_in, device,
                                  warmup=latency.warmup, repeats=latency.repeats)
    lat_student = measure_latency(student, latency.batch, dim_in, device,
                                  warmup=latency.warmup, repeats=latency.repeats)
    teacher.to(cpu)
    student.to(cpu)

    svd, best = methods["svd"], methods[STUDENT]
    params_teacher = num_parameters(teacher)
    result = {
        # the published keys (student = distil_da)
        "svd_cosine": svd["cosine"],
        "svd_rel_mse": svd["rel_mse"],
        "student_cosine": best["cosine"],
        "student_rel_mse": best["rel_mse"],
        "cosine_improvement": best["cosine"] - svd["cosine"],
        "mse_reduction": (svd["rel_mse"] - best["rel_mse"]) / svd["rel_mse"]
        if svd["rel_mse"] > 0 else 0.0,
        "latency_teacher_ms": lat_teacher["median_ms"],
        "latency_student_ms": lat_student["median_ms"],
        "speedup": lat_teacher["median_ms"] / lat_student["median_ms"],
        "params_teacher": params_teacher,
        "params_student": best["params"],
        "compression": params_teacher / best["params"],
        # what the published keys leave out
        "svd_explained_variance": svd["explained_variance"],
        "student_explained_variance": best["explained_variance"],
        "flop_ratio": flop_ratio(dim_in, dim_out, rank),
        "latency": {"teacher": lat_teacher, "student": lat_student},
        "methods": methods,
    }
    if probe is not None:
        result["teacher_spearman"] = spearman(probe(y_val), inputs.val_fitness)
    return result


# ----------------------------------------------------------------------------- rank sweep


def sweep_ranks(dim: int, divisors=(80, 40, 20, 10, 5, 4)) -> list[int]:
    """Ranks from heavy to light compression: D/80 .. D/4, D/20 included."""
    return sorted({max(1, dim // d) for d in divisors if max(1, dim // d) < dim})


@torch.no_grad()
def sweep_teacher(teacher: nn.Linear, inputs: Inputs, ranks: list[int],
                  distill_cfg: DistillSettings, device: torch.device, seed: int, name: str = "",
                  known: dict[int, dict] | None = None) -> dict:
    """svd, data_aware and distil_da at every rank, on validation; and the exact closed-form
    curve for every rank 0..D from one eigendecomposition.

    The curve is the explained variance on the training rows, where the closed form is exactly
    optimal: `data_aware_train_explained_variance` measures the fitted students on those rows,
    and the two must agree to rounding (`closed_form_max_abs_gap`).
    `known` maps a rank to already-built students (the main run's), to avoid refitting them.
    """
    cpu = torch.device("cpu")
    teacher = teacher.to(cpu)
    moments = input_moments(inputs.train)
    errors = data_aware_error_curve(teacher.weight, moments)
    curve = (1 - errors / errors[0]).tolist()
    y_val, y_train = teacher(inputs.val), teacher(inputs.train)
    dim_in, dim_out = teacher.in_features, teacher.out_features
    methods = {m: {"explained_variance": [], "cosine": [], "rel_mse": []} for m in SWEEP_METHODS}
    train_measured = []
    for rank in ranks:
        if known and rank in known:
            built = {m: known[rank][m][0] for m in SWEEP_METHODS}
        else:
            built = {"svd": compress_svd(teacher, rank),
                     "data_aware": compress_data_aware(teacher, moments, rank)}
            with torch.enable_grad():
                _, (student, _, _) = distil_da(teacher, inputs, rank, distill_cfg, device,
                                               seed=seed + rank, name=name)
            built["distil_da"] = student
        for method, module in built.items():
            scores = fidelity(y_val, module.to(cpu)(inputs.val))
            for key in methods[method]:
                methods[method][key].append(scores[key])
        train_measured.append(fidelity(y_train, built["data_aware"].to(cpu)(inputs.train))
                              ["explained_variance"])
    teacher.to(cpu)
    gap = max(abs(train_measured[i] - curve[r]) for i, r in enumerate(ranks))
    return {
        "ranks": list(ranks),
        "compression": [dim_in * dim_out / (r * (dim_in + dim_out)) for r in ranks],
        "methods": methods,
        "closed_form_train_explained_variance": curve,
        "data_aware_train_explained_variance": train_measured,
        "closed_form_max_abs_gap": gap,
        "smallest_rank_for_train_explained_variance": smallest_rank_reaching(curve),
    }
