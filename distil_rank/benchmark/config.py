"""Every setting of a benchmark run, in one frozen dataclass that is printed at start and saved
beside the results. Each stage's own settings are a frozen dataclass of that stage, held here
whole (`config.distill`, `config.teacher`, `config.head`, `config.latency`) and passed whole."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from distil_rank.benchmark.latency import LatencySettings
from distil_rank.benchmark.teachers import HeadSettings, TeacherSettings
from distil_rank.distill import HOLDOUT_FRACTION, DistillSettings

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
    task_damping: float = 1e-3  # task_aware: G + damping * tr(G) / out * I
    task_probes: int = 4  # task_aware: Hutchinson probes per row for a vector readout

    # --- the stages' own settings (each default commented in its class) ---
    teacher: TeacherSettings = TeacherSettings()  # Task-Trained's denoising task, Spectral's decay
    head: HeadSettings = HeadSettings()  # the Fitness-Head teacher's training
    distill: DistillSettings = DistillSettings()  # the one distillation recipe
    latency: LatencySettings = LatencySettings()  # the teacher-vs-student timing and the matrix
    selection_fraction: float = HOLDOUT_FRACTION  # train rows held out to choose checkpoints

    # --- rank sweep and repetitions ---
    sweep: bool = True  # also sweep the rank for svd, data_aware and distil_da
    sweep_divisors: tuple[int, ...] = (80, 40, 20, 10, 5, 4)  # ranks D/80 .. D/4
    num_seeds: int = 3  # repetitions with seeds seed, seed+1, ...; the JSON gives mean and std

    # --- downstream probe ---
    ridge_alpha: float = 1e-2  # ridge penalty, relative to the mean eigenvalue of the features

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

    def updated(self, changes: dict) -> Config:
        """A copy with `changes` applied; a stage's settings take a dict of their own fields,
        e.g. {"distill": {"steps": 60}}, which leaves its other fields as they are."""
        whole = {k: dataclasses.replace(getattr(self, k), **v) if isinstance(v, dict) else v
                 for k, v in changes.items()}
        return dataclasses.replace(self, **whole)


# Named presets, the size in the name: what each changes from the defaults above. A preset for
# real ESM-2 650M embeddings would be one more entry (train_path, val_path, rank 64).
PRESETS = {
    "published-1280d": dict(
        # The published Distil-Rank setting: 1280-d layers (ESM-2 650M's width) at rank 64 with
        # the published recipe (DistillSettings' defaults). No 650M embeddings can be had here,
        # so the synthetic 1280-d stand-in is used. Three seeds (for the std) and a sweep of
        # three ranks (16, 64, 256) keep it within 10 minutes on 2 CPU cores.
        data="synthetic", synthetic_dim=1280, rank=64, out="results/published",
        num_seeds=3, sweep_divisors=(80, 20, 5),
    ),
}


def preset_overrides(name: str) -> dict:
    """What preset `name` (its full name, or the part before its size: "published") changes,
    with its full name recorded."""
    full = next((p for p in PRESETS if name in (p, p.rsplit("-", 1)[0])), None)
    if full is None:
        raise KeyError(name)
    return dict(PRESETS[full], preset=full)


# What --quick changes: enough to exercise every stage, not enough to mean anything.
QUICK = dict(
    out="results/quick",  # never over a full run's results
    teacher=dict(steps=50),
    head=dict(steps=200),
    distill=dict(steps=60, eval_every=20),
    latency=dict(warmup=3, repeats=10, batches=(1, 32, 256), budget_s=0.05),
    sweep_divisors=(40, 20, 10),
    num_seeds=2,
    synthetic_dim=256,
    synthetic_train=600,
    synthetic_val=200,
)
