"""The teacher strategies: three frozen nn.Linear(D, D) with bias, judged by their own output,
and a trained head whose first layer is compressed and judged by the task.

Random        PyTorch's default initialisation (Kaiming-uniform weight, uniform bias): a layer
              with a flat spectrum, the hardest case for any low-rank method.
Task-Trained  trained by AdamW on a denoising proxy task over the training embeddings,
              x + noise -> x, from zero by default: a layer learned on the embeddings, all of
              whose weight the data asked for. From PyTorch's default init instead
              (init="default", the recipe before), the random part in directions the
              embeddings do not vary in stays, and a rank-r SVD spends its rank on it
              (scripts/task_trained_ablation.py measures both).
Spectral      orthogonal U, V and singular values exp(-i / (tau * D)): a layer that truly is
              nearly low rank, the easy case.

Fitness-Head  Linear(D, D) -> GELU -> Linear(D, 1), trained by Adam on the standardised measured
              fitness of the fit rows, keeping the checkpoint with the least MSE on the
              selection rows. The input standardisation is folded into the first layer, which
              therefore reads raw embeddings like every other teacher. Its `readout` (GELU and
              the output layer) is what task-aware compression weights the error by.

Every draw comes from a generator seeded by `stage_seed(seed, "teachers/<name>")`; the global
random state is never touched.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from distil_rank.lowrank import seeded_linear
from distil_rank.runtime import stage_seed

HEAD_NAME = "Fitness-Head"


@dataclass
class Teacher:
    """A layer to compress and, for a head, the frozen rest of it that reads the layer."""

    layer: nn.Linear
    readout: nn.Module | None = None  # None: the layer is judged by its own output


@dataclass(frozen=True)
class TeacherSettings:
    steps: int = 500  # AdamW steps of the denoising proxy task (Task-Trained)
    lr: float = 1e-3  # its learning rate
    batch_size: int = 256  # rows per denoising step
    denoise_noise: float = 0.5  # noise std, relative to the embeddings' per-coordinate spread
    spectral_tau: float = 0.1  # e-folding length of the Spectral teacher's singular values, / D
    init: str = "zero"  # Task-Trained's start, a key of TEACHER_INIT_SCALES (docs: ablation)
    weight_decay: float = 0.0  # AdamW's decoupled weight decay on the denoising task


@dataclass(frozen=True)
class HeadSettings:
    """The Fitness-Head teacher, built when both splits carry fitness labels."""

    steps: int = 1500  # Adam steps on the standardised fitness of the fit rows
    lr: float = 1e-3  # Adam learning rate
    batch_size: int = 128  # rows per step
    eval_every: int = 50  # steps between checkpoint evaluations on the selection rows


def _freeze(layer: nn.Module) -> nn.Module:
    layer.requires_grad_(False)
    return layer.eval()


def random_teacher(dim: int, seed: int) -> nn.Linear:
    return _freeze(seeded_linear(dim, dim, torch.Generator().manual_seed(seed)))


# Task-Trained's initial weights: nn.Linear's default (Kaiming-uniform) init times this scale.
TEACHER_INIT_SCALES = {"default": 1.0, "small": 1e-2, "zero": 0.0}


def task_trained_teacher(train_x: torch.Tensor, settings: TeacherSettings,
                         seed: int) -> tuple[nn.Linear, list[float]]:
    """Denoising: minimise ||layer(x + e) - x||^2 with e ~ N(0, (noise * spread)^2 I), where
    spread is the root-mean-square per-coordinate deviation of the embeddings from their mean
    (so the noise is on the scale of the data's own variation, not of its large common mean),
    by AdamW from nn.Linear's default init scaled by TEACHER_INIT_SCALES[settings.init]."""
    if settings.init not in TEACHER_INIT_SCALES:
        raise ValueError(f"teacher init {settings.init!r}: expected one of "
                         f"{', '.join(TEACHER_INIT_SCALES)}")
    g = torch.Generator().manual_seed(seed)
    layer = seeded_linear(train_x.shape[1], train_x.shape[1], g)
    with torch.no_grad():
        for p in layer.parameters():
            p.mul_(TEACHER_INIT_SCALES[settings.init])
    spread = (train_x - train_x.mean(0)).pow(2).mean().sqrt()
    sigma = float(settings.denoise_noise * spread)
    optimiser = torch.optim.AdamW(layer.parameters(), lr=settings.lr,
                                  weight_decay=settings.weight_decay)
    losses = []
    for _ in range(settings.steps):
        idx = torch.randint(train_x.shape[0], (min(settings.batch_size, train_x.shape[0]),),
                            generator=g)
        clean = train_x[idx]
        noisy = clean + sigma * torch.randn(clean.shape, generator=g)
        loss = (layer(noisy) - clean).pow(2).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    return _freeze(layer), losses


def spectral_teacher(dim: int, *, seed: int, tau: float) -> nn.Linear:
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    singular = torch.exp(-torch.arange(dim, dtype=torch.float64) / (tau * dim))
    layer = nn.Linear(dim, dim, device="meta").to_empty(device="cpu")
    with torch.no_grad():
        layer.weight.copy_(u @ torch.diag(singular) @ v.T)
        bound = dim**-0.5  # the default bias init of nn.Linear
        layer.bias.copy_((torch.rand(dim, generator=g, dtype=torch.float64) * 2 - 1) * bound)
    return _freeze(layer)


def train_head(head: nn.Module, x: torch.Tensor, y: torch.Tensor, selection_x: torch.Tensor,
               selection_y: torch.Tensor, settings: HeadSettings, generator: torch.Generator):
    """Train `head` in place by Adam on the MSE to `y` (one random batch of rows per step),
    evaluating the selection rows' MSE every `eval_every` steps (step 0 and the last included),
    and load the checkpoint with the least: the Fitness-Head's rule, shared by every head the
    benchmark trains on labels. Returns (the selection MSE per evaluation, the step kept)."""
    optimiser = torch.optim.Adam(head.parameters(), lr=settings.lr)
    checkpoints, best = [], (float("inf"), None, 0)
    for step in range(settings.steps + 1):
        if step % settings.eval_every == 0 or step == settings.steps:
            with torch.no_grad():
                mse = (head(selection_x).squeeze(-1) - selection_y).pow(2).mean().item()
            checkpoints.append(mse)
            if mse < best[0]:
                best = (mse, copy.deepcopy(head.state_dict()), step)
        if step == settings.steps:
            break
        idx = torch.randint(x.shape[0], (min(settings.batch_size, x.shape[0]),),
                            generator=generator)
        loss = (head(x[idx]).squeeze(-1) - y[idx]).pow(2).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    head.load_state_dict(best[1])
    return checkpoints, best[2]


@dataclass(frozen=True)
class Standardisation:
    """Per-coordinate mean and std of some rows and of their labels: the coordinates every
    label-trained head of the benchmark learns in."""

    x_mean: torch.Tensor
    x_std: torch.Tensor
    y_mean: torch.Tensor
    y_std: torch.Tensor

    @classmethod
    def of(cls, rows: torch.Tensor, values: torch.Tensor) -> Standardisation:
        return cls(rows.mean(0), rows.std(0).clamp_min(1e-12), values.mean(),
                   values.std().clamp_min(1e-12))

    def x(self, rows: torch.Tensor) -> torch.Tensor:
        return (rows - self.x_mean) / self.x_std

    def y(self, values: torch.Tensor) -> torch.Tensor:
        return (values - self.y_mean) / self.y_std


def fitness_head(fit_x: torch.Tensor, fit_y: torch.Tensor, selection_x: torch.Tensor,
                 selection_y: torch.Tensor, settings: HeadSettings, seed: int):
    """The Fitness-Head teacher, frozen, and (its selection-row MSE per evaluation, the step
    kept)."""
    g = torch.Generator().manual_seed(seed)
    dim = fit_x.shape[1]
    scale = Standardisation.of(fit_x, fit_y)
    head = nn.Sequential(seeded_linear(dim, dim, g), nn.GELU(), seeded_linear(dim, 1, g))
    trained = train_head(head, scale.x(fit_x), scale.y(fit_y), scale.x(selection_x),
                         scale.y(selection_y), settings, g)
    first = head[0]
    with torch.no_grad():  # fold the standardisation: W ((x - m) / s) + b = (W / s) x + b'
        first.bias.sub_(first.weight @ (scale.x_mean / scale.x_std))
        first.weight.div_(scale.x_std)
    return Teacher(_freeze(first), _freeze(head[1:])), trained


def teacher_seed(seed: int, name: str) -> int:
    """The seed a linear teacher is drawn or trained with, in the run of seed `seed`."""
    return stage_seed(stage_seed(seed, "teachers"), f"teachers/{name}")


def build_teachers(train_x: torch.Tensor, settings: TeacherSettings, seed: int):
    """The linear teachers of the run of seed `seed` (on the CPU, float32) and the denoising
    loss curve."""
    dim = train_x.shape[1]
    trained, losses = task_trained_teacher(train_x, settings, teacher_seed(seed, "Task-Trained"))
    teachers = {
        "Random": random_teacher(dim, teacher_seed(seed, "Random")),
        "Task-Trained": trained,
        "Spectral": spectral_teacher(dim, seed=teacher_seed(seed, "Spectral"),
                                     tau=settings.spectral_tau),
    }
    return {name: Teacher(layer) for name, layer in teachers.items()}, losses
