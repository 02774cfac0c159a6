"""Distillation of a LowRankLinear student from a frozen teacher.

Loss (the published Distil-Rank recipe): MSE(student(x), teacher(x)) + alpha * (1 - cos), with
AdamW over shuffled mini-batches of the training embeddings.

With `holdout` given, the student is evaluated every `eval_every` steps (and before the first)
on inputs it never trains on, and the checkpoint with the least held-out MSE is returned. Step 0
is a candidate, so the result is never worse than its warm start on that held-out data.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm


@dataclass
class DistillResult:
    student: nn.Module
    losses: list[float]  # training loss per step
    checkpoints: list[tuple[int, float]] = field(default_factory=list)  # (step, held-out MSE)
    chosen_step: int | None = None  # the step whose weights were kept
    fit_seconds: float = 0.0


def distill_loss(pred: torch.Tensor, target: torch.Tensor, alpha: float) -> torch.Tensor:
    cosine = F.cosine_similarity(pred, target, dim=-1).mean()
    return F.mse_loss(pred, target) + alpha * (1 - cosine)


@torch.no_grad()
def _mse(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return F.mse_loss(module(x), y).item()


def distill(teacher: nn.Module, student: nn.Module, train_x: torch.Tensor, *, steps: int,
            lr: float, batch_size: int, alpha: float, weight_decay: float, seed: int,
            device: torch.device, holdout_x: torch.Tensor | None = None, eval_every: int = 50,
            desc: str = "distil") -> DistillResult:
    """Train a copy of `student` to imitate `teacher`; the inputs stay untouched."""
    start = time.perf_counter()
    teacher = teacher.to(device)
    student = copy.deepcopy(student).to(device).train()
    x = train_x.to(device)
    with torch.no_grad():
        y = teacher(x)
        if holdout_x is not None:
            hx = holdout_x.to(device)
            hy = teacher(hx)
    g = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=weight_decay)
    batch_size = min(batch_size, x.shape[0])
    order = torch.randperm(x.shape[0], generator=g)
    cursor = 0
    losses: list[float] = []
    checkpoints: list[tuple[int, float]] = []
    best_state, best_step = None, None
    if holdout_x is not None:
        checkpoints.append((0, _mse(student, hx, hy)))
        best_state, best_step = copy.deepcopy(student.state_dict()), 0

    for step in tqdm(range(1, steps + 1), desc=desc, leave=False, disable=None):
        if cursor + batch_size > x.shape[0]:  # a new epoch: reshuffle
            order, cursor = torch.randperm(x.shape[0], generator=g), 0
        idx = order[cursor:cursor + batch_size].to(device)
        cursor += batch_size
        loss = distill_loss(student(x[idx]), y[idx], alpha)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        if holdout_x is not None and (step % eval_every == 0 or step == steps):
            mse = _mse(student, hx, hy)
            checkpoints.append((step, mse))
            if mse < min(m for _, m in checkpoints[:-1]):
                best_state, best_step = copy.deepcopy(student.state_dict()), step

    if best_state is not None:
        student.load_state_dict(best_state)
    student.eval().requires_grad_(False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return DistillResult(student, losses, checkpoints, best_step, time.perf_counter() - start)
