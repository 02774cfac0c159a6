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
    flop_ratio,
    input_moments,
    num_parameters,
)
from distil_rank.metrics import fidelity, fit_ridge, spearman
from distil_rank.timing import measure_latency

METHODS = ("svd", "data_aware", "distil", "distil_da")
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


def compress_teacher(teacher: nn.Linear, inputs: Inputs, rank: int, distill_cfg: DistillSettings,
                     device: torch.device, seed: int, name: str = ""):
    """Every compressor applied to `teacher`: {method: (module, fit_seconds, extra)} and the
    distillation results for the loss curves."""
    students, runs = {}, {}
    svd_student, seconds = _timed(lambda: compress_svd(teacher, rank))
    students["svd"] = (svd_student, seconds, {})
    da_student, seconds = _timed(lambda: compress_data_aware(teacher, input_moments(inputs.train), rank))
    students["data_aware"] = (da_student, seconds, {})

    common = dict(steps=distill_cfg.steps, lr=distill_cfg.lr, batch_size=distill_cfg.batch_size,
                  alpha=distill_cfg.alpha, weight_decay=distill_cfg.weight_decay, device=device)
    # The published recipe, kept as the reference row: SVD warm start, all training rows,
    # the weights after the last step.
    runs["distil"] = distill(teacher, svd_student, inputs.train, seed=seed, desc=f"{name} distil",
                             **common)
    students["distil"] = (runs["distil"].student, runs["distil"].fit_seconds, {})
    # The project's student: the closed form fitted on the fit rows, distilled on them, and the
    # checkpoint (step 0 included) chosen on the held-out selection rows.
    warm, warm_seconds = _timed(lambda: compress_data_aware(teacher, input_moments(inputs.fit), rank))
    runs["distil_da"] = distill(teacher, warm, inputs.fit, seed=seed + 1,
                                holdout_x=inputs.selection, eval_every=distill_cfg.eval_every,
                                desc=f"{name} distil_da", **common)
    run = runs["distil_da"]
    students["distil_da"] = (run.student, warm_seconds + run.fit_seconds, {
        "chosen_step": run.chosen_step,
        "selection_mse_warm_start": run.checkpoints[0][1],
        "selection_mse_chosen": min(m for _, m in run.checkpoints),
        "warm_start": warm,
    })
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
