"""Data-parallel distillation with DistributedDataParallel, for rows spread over processes.

Start the processes with torchrun; each holds its own rows (e.g. its calibration shards). Every
step each process draws `batch_size` of its rows, DDP averages the gradients, and every process
applies the same AdamW step, so the students stay identical. With equal batch sizes this is
exactly single-process distillation on the concatenated batches (tests/test_distributed.py
checks that against a plain loop).

    torchrun --nproc-per-node 2 your_script.py     # calling distill_data_parallel(...)
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from distil_rank.distill import distill_loss


def rank_generator(seed: int, rank: int) -> torch.Generator:
    """Each process draws its own batches: the seed and the rank decide them."""
    return torch.Generator().manual_seed(seed * 7919 + rank)


def distill_data_parallel(teacher: nn.Module, student: nn.Module, local_x: torch.Tensor, *,
                          steps: int, lr: float, batch_size: int, alpha: float,
                          weight_decay: float, seed: int, device: torch.device):
    """Distil a copy of `student` on every process's rows; returns (student, local losses).
    Needs an initialised process group (gloo on the CPU, nccl on GPUs)."""
    if not dist.is_initialized():
        raise RuntimeError("distill_data_parallel needs torch.distributed to be initialised "
                           "(start with torchrun)")
    rank = dist.get_rank()
    teacher = teacher.to(device)
    model = copy.deepcopy(student).to(device).train()
    # Start from identical weights everywhere, whatever each process was given.
    for tensor in model.state_dict().values():
        dist.broadcast(tensor, src=0)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    x = local_x.to(device)
    with torch.no_grad():
        y = teacher(x)
    g = rank_generator(seed, rank)
    optimiser = torch.optim.AdamW(ddp.parameters(), lr=lr, weight_decay=weight_decay)
    losses = []
    for _ in range(steps):
        idx = torch.randint(x.shape[0], (batch_size,), generator=g).to(device)
        loss = distill_loss(ddp(x[idx]), y[idx], alpha)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()  # DDP all-reduces (averages) the gradients here
        optimiser.step()
        losses.append(loss.item())
    # Hand back a clean module: the wrapped one carries DDP's gradient hooks, which tie it to
    # the process group and abort the process at exit if they outlive it.
    trained = copy.deepcopy(student).to(device)
    trained.load_state_dict(model.state_dict())
    del ddp, model, optimiser
    return trained.eval().requires_grad_(False), losses
