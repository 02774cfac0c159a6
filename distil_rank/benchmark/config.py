"""Every setting of a benchmark run, in one frozen dataclass that is printed at start and saved
beside the results."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

DEFAULT_TRAIN = "embeddings_train.pt"
DEFAULT_VAL = "embeddings_val.pt"


@dataclass(frozen=True)
class Config:
    # --- data ---
    train_path: str = DEFAULT_TRAIN  # training embeddings (.pt dict or tensor, .npy, .npz)
    val_path: str = DEFAULT_VAL  # held-out embeddings: every fidelity metric is measured here
    data: str = "auto"  # auto: the files if present, synthetic if both defaults are absent
    synthetic_dim: int = 1280  # width of the synthetic stand-in (ESM-2 650M's hidden size)
    synthetic_train: int = 4000  # synthetic training rows
    synthetic_val: int = 1000  # synthetic validation rows
    synthetic_latent_dim: int = 48  # intrinsic dimension of the synthetic embeddings

    # --- compression ---
    rank: int | None = None  # target rank; None means input_dim // rank_divisor
    rank_divisor: int = 20  # r = D / 20 gives about 10x fewer parameters for a square layer

    # --- teachers ---
    teacher_steps: int = 500  # AdamW steps of the denoising proxy task (Task-Trained)
    teacher_lr: float = 1e-3  # Adam learning rate of the denoising task
    teacher_batch_size: int = 256  # rows per denoising step
    denoise_noise: float = 0.5  # noise std, relative to the embeddings' per-coordinate spread
    spectral_tau: float = 0.1  # e-folding length of the Spectral teacher's singular values, / D
    teacher_init: str = "zero"  # Task-Trained's start: zero, small or default (README: ablation)
    teacher_weight_decay: float = 0.0  # AdamW weight decay of the denoising task

    # --- the Fitness-Head teacher (built when both splits carry fitness labels) ---
    head_steps: int = 1500  # Adam steps on the standardised fitness of the fit rows
    head_lr: float = 1e-3  # Adam learning rate
    head_batch_size: int = 128  # rows per step
    head_eval_every: int = 50  # steps between checkpoint evaluations on the selection rows

    # --- task-aware compression (heads only) ---
    task_damping: float = 1e-3  # G + damping * tr(G) / out * I (the minimiser barely moves below)
    task_probes: int = 4  # Hutchinson probes per row when the readout has a vector output

    # --- distillation (the published Distil-Rank recipe) ---
    steps: int = 1000  # optimiser steps
    lr: float = 3e-3  # AdamW learning rate
    batch_size: int = 64  # rows per step
    alpha: float = 0.1  # loss = MSE + alpha * (1 - cosine)
    weight_decay: float = 0.01  # AdamW's default decoupled weight decay
    selection_fraction: float = 0.15  # part of train held out to pick distil_da's checkpoint
    eval_every: int = 50  # steps between checkpoint evaluations on that held-out part
    patience: int | None = 200  # a held-out student stops 200 steps after its best checkpoint

    # --- rank sweep and repetitions ---
    sweep: bool = True  # also sweep the rank for svd, data_aware and distil_da
    sweep_divisors: tuple[int, ...] = (80, 40, 20, 10, 5, 4)  # ranks D/80 .. D/4
    num_seeds: int = 3  # repetitions with seeds seed, seed+1, ...; the JSON gives mean and std

    # --- downstream probe ---
    ridge_alpha: float = 1e-2  # ridge penalty, relative to the mean eigenvalue of the features

    # --- latency ---
    latency_batch: int = 32  # rows per forward pass
    latency_warmup: int = 20  # untimed calls before measuring
    latency_repeats: int = 200  # timed calls; the median is reported
    latency_batches: tuple[int, ...] = (1, 32, 256, 4096)  # the run's small latency matrix
    latency_budget_s: float = 0.5  # seconds per matrix cell at most (at least 5 calls)

    # --- run ---
    device: str = "auto"  # auto: CUDA when available, else CPU
    seed: int = 0  # seeds teachers, synthetic data, splits and distillation
    out: str = "results"  # where the JSON summary and the figure go
    threads: int | None = None  # PyTorch's CPU threads; None: its own choice
    quiet: bool = False  # print only errors and where the results went
    quick: bool = False  # a smoke run of a few seconds (fewer steps and timing repeats)
    preset: str | None = None  # the named preset the run started from, if any (PRESETS)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def seeds(self) -> list[int]:
        """The seed of each repetition."""
        return [self.seed + i for i in range(self.num_seeds)]

    def settings(self, kind):
        """A stage's settings dataclass (DistillSettings, TeacherSettings, LatencySettings),
        filled from this config's fields of the same names: the defaults live here only."""
        return kind(**{f.name: getattr(self, f.name) for f in dataclasses.fields(kind)})


# Named presets, the size in the name: what each changes from the defaults above. A preset for
# real ESM-2 650M embeddings would be one more entry (train_path, val_path, rank 64).
PRESETS = {
    "published-1280d": dict(
        # The published Distil-Rank setting: 1280-d layers (ESM-2 650M's width) at rank 64 with
        # the published recipe (the defaults: AdamW 3e-3, batch 64, 1000 steps, alpha 0.1).
        # No 650M embeddings can be had here, so the synthetic 1280-d stand-in is used.
        # Three seeds (for the std) and a sweep of three ranks (16, 64, 256) keep it within
        # 10 minutes on 2 CPU cores.
        data="synthetic", synthetic_dim=1280, rank=64, out="results/published",
        num_seeds=3, sweep_divisors=(80, 20, 5),
    ),
}
PRESET_ALIASES = {"published": "published-1280d"}


def preset_overrides(name: str) -> dict:
    """What preset `name` (or its alias) changes, with its full name recorded."""
    full = PRESET_ALIASES.get(name, name)
    if full not in PRESETS:
        raise KeyError(name)
    return dict(PRESETS[full], preset=full)


def quick_overrides() -> dict:
    """What --quick changes: enough to exercise every stage, not enough to mean anything."""
    return dict(
        out="results/quick",  # never over the cited results
        teacher_steps=50,
        steps=60,
        eval_every=20,
        latency_warmup=3,
        latency_repeats=10,
        latency_batches=(1, 32, 256),
        latency_budget_s=0.05,
        sweep_divisors=(40, 20, 10),
        head_steps=200,
        num_seeds=2,
        synthetic_dim=256,
        synthetic_train=600,
        synthetic_val=200,
    )
