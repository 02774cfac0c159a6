"""Distillation of a low-rank student from a frozen teacher, on one process or many.

Loss (the published Distil-Rank recipe): MSE(student(x), teacher(x)) + alpha * (1 - cos), with
AdamW over mini-batches drawn without replacement, reshuffled every epoch.

With a `readout` (the frozen rest of a head), both outputs pass through it before the loss: the
student is distilled end to end on what the head reads, not on the layer's output.

With held-out rows, the student is evaluated every `eval_every` steps (and before the first) on
rows it never trains on, and the checkpoint with the least held-out MSE is returned. Step 0 is a
candidate, so the result is never worse than its warm start on that held-out data.

`distill_data_parallel` is the same algorithm under DistributedDataParallel (start the processes
with torchrun): each process draws batches from its own rows, DDP averages the gradients so every
process takes the same AdamW step, and the held-out MSE is summed over every process's held-out
rows before a checkpoint is chosen, so all processes keep the same one. With equal batch sizes it
equals one process distilling on the joined batches (tests/test_distributed.py checks this).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from distil_rank.config import stage_seed


@dataclass(frozen=True)
class DistillSettings:
    steps: int  # optimiser steps
    lr: float  # AdamW learning rate
    batch_size: int  # rows per step (per process under DDP)
    alpha: float  # loss = MSE + alpha * (1 - cosine)
    weight_decay: float  # AdamW's decoupled weight decay
    eval_every: int  # steps between held-out evaluations, when there are held-out rows


@dataclass
class DistillResult:
    student: nn.Module
    losses: list[float]  # training loss per step (this process's batches)
    checkpoints: list[tuple[int, float]] = field(default_factory=list)  # (step, held-out MSE)
    chosen_step: int | None = None  # the step whose weights were kept; None: the last one
    fit_seconds: float = 0.0


def distill_loss(pred: torch.Tensor, target: torch.Tensor, alpha: float) -> torch.Tensor:
    cosine = F.cosine_similarity(pred, target, dim=-1).mean()
    return F.mse_loss(pred, target) + alpha * (1 - cosine)


def epoch_batches(rows: int, batch_size: int, generator: torch.Generator):
    """Endless row indices, `batch_size` at a time, without replacement within an epoch; a batch
    that would straddle two epochs starts the next one instead."""
    batch_size = min(batch_size, rows)
    while True:
        order = torch.randperm(rows, generator=generator)
        for start in range(0, rows - batch_size + 1, batch_size):
            yield order[start:start + batch_size]


def distill(teacher: nn.Module, student: nn.Module, train_x: torch.Tensor,
            settings: DistillSettings, *, seed: int, device: torch.device,
            holdout_x: torch.Tensor | None = None, readout: nn.Module | None = None,
            desc: str = "distil") -> DistillResult:
    """Train a copy of `student` to imitate `teacher` (through `readout` when given); teacher,
    student, readout and inputs stay as they were."""
    return _distill(teacher, student, train_x, settings, torch.Generator().manual_seed(seed),
                    device, holdout_x, readout, desc, parallel=False)


def distill_data_parallel(teacher: nn.Module, student: nn.Module, local_x: torch.Tensor,
                          settings: DistillSettings, *, seed: int, device: torch.device,
                          local_holdout_x: torch.Tensor | None = None,
                          readout: nn.Module | None = None) -> DistillResult:
    """`distill` on every process's own rows (an initialised process group is needed: gloo on
    the CPU, nccl on GPUs). Every process starts from process 0's student and returns the same
    one."""
    if not dist.is_initialized():
        raise RuntimeError("distill_data_parallel needs torch.distributed to be initialised "
                           "(start with torchrun)")
    generator = torch.Generator().manual_seed(process_seed(seed, dist.get_rank()))
    return _distill(teacher, student, local_x, settings, generator, device, local_holdout_x,
                    readout, "distil", parallel=True)


def process_seed(seed: int, process_rank: int) -> int:
    """The batch-drawing seed of one process under data parallelism."""
    return stage_seed(seed, f"process/{process_rank}")


def _distill(teacher, student, train_x, settings, generator, device, holdout_x, readout, desc,
             parallel):
    start = time.perf_counter()
    teacher = copy.deepcopy(teacher).to(device)
    model = copy.deepcopy(student).to(device).train()
    trained = model
    if readout is not None:
        readout = copy.deepcopy(readout).to(device).eval().requires_grad_(False)
        teacher = nn.Sequential(teacher, readout)
        trained = nn.Sequential(model, readout)
    x = train_x.to(device)
    with torch.no_grad():
        y = teacher(x)
        if holdout_x is not None:
            hx = holdout_x.to(device)
            hy = teacher(hx)
    if parallel:
        for tensor in model.state_dict().values():  # start from process 0's weights everywhere
            dist.broadcast(tensor, src=0)
        trained = torch.nn.parallel.DistributedDataParallel(
            trained, device_ids=[device.index] if device.type == "cuda" else None)

    @torch.no_grad()
    def holdout_mse() -> float:
        predicted = model(hx) if readout is None else readout(model(hx))
        error = torch.stack([F.mse_loss(predicted, hy, reduction="sum"),
                             torch.tensor(float(hy.numel()), device=device)]).double()
        if parallel:
            dist.all_reduce(error)
        return (error[0] / error[1]).item()

    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.lr,  # fused: one kernel a step
                                  weight_decay=settings.weight_decay, fused=True)
    batches = epoch_batches(x.shape[0], settings.batch_size, generator)
    losses: list[float] = []
    checkpoints: list[tuple[int, float]] = []
    best_state, best_step = None, None
    if holdout_x is not None:
        checkpoints.append((0, holdout_mse()))
        best_state, best_step = copy.deepcopy(model.state_dict()), 0
    steps = settings.steps
    for step in tqdm(range(1, steps + 1), desc=desc, leave=False, disable=None):
        idx = next(batches).to(device)
        loss = distill_loss(trained(x[idx]), y[idx], settings.alpha)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()  # under DDP the gradients are averaged over processes here
        optimiser.step()
        losses.append(loss.item())
        if holdout_x is not None and (step % settings.eval_every == 0 or step == steps):
            checkpoints.append((step, holdout_mse()))
            if checkpoints[-1][1] < min(m for _, m in checkpoints[:-1]):
                best_state, best_step = copy.deepcopy(model.state_dict()), step

    # Hand back a clean module: under DDP the wrapped one carries gradient hooks tied to the
    # process group, which abort the process at exit if they outlive it.
    result = copy.deepcopy(student).to(device)
    result.load_state_dict(best_state if best_state is not None else model.state_dict())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return DistillResult(result.eval().requires_grad_(False), losses, checkpoints, best_step,
                         time.perf_counter() - start)
