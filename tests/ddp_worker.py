"""Run by tests/test_distributed.py under torchrun: data-parallel distillation on this process's
rows, the result written per process."""

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from distil_rank.distill import DistillSettings, distill_data_parallel
from distil_rank.lowrank import LowRankLinear


def main(folder: str) -> None:
    folder = Path(folder)
    dist.init_process_group("gloo")
    process_rank = dist.get_rank()
    setup = torch.load(folder / "setup.pt", weights_only=True)
    teacher = nn.Linear(*setup["teacher_shape"])
    teacher.load_state_dict(setup["teacher"])
    student = LowRankLinear(*setup["student_shape"])
    if process_rank == 0:  # the others start from other weights: process 0's must be broadcast
        student.load_state_dict(setup["student"])
    result = distill_data_parallel(
        teacher, student, setup["x"][process_rank], DistillSettings(**setup["settings"]),
        seed=setup["seed"], device=torch.device("cpu"),
        local_holdout_x=setup["holdout"][process_rank])
    torch.save({"state": result.student.state_dict(), "chosen_step": result.chosen_step,
                "checkpoints": torch.tensor(result.checkpoints)},
               folder / f"student_{process_rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
    # Everything this test checks is written and both processes have met at the barrier. Leave
    # without the interpreter's teardown, where gloo's background threads can meet a peer that
    # has already gone and abort (SIGABRT, "terminate called without an active exception"):
    # an abort after the work, which failed this test on busy machines and says nothing about
    # the distillation it checks.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
