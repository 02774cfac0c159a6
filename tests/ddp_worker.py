"""Run by tests/test_distributed.py under torchrun: data-parallel distillation on this rank's
rows, the student written per rank."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from distil_rank.distributed import distill_data_parallel  # noqa: E402
from distil_rank.lowrank import LowRankLinear  # noqa: E402


def main(folder: str) -> None:
    folder = Path(folder)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    setup = torch.load(folder / "setup.pt", weights_only=True)
    teacher = nn.Linear(*setup["teacher_shape"])
    teacher.load_state_dict(setup["teacher"])
    student = LowRankLinear(*setup["student_shape"])
    if rank == 0:  # the other ranks start from different weights: DDP must broadcast rank 0's
        student.load_state_dict(setup["student"])
    trained, losses = distill_data_parallel(
        teacher, student, setup["x"][rank], steps=setup["steps"], lr=setup["lr"],
        batch_size=setup["batch_size"], alpha=setup["alpha"], weight_decay=setup["weight_decay"],
        seed=setup["seed"], device=torch.device("cpu"))
    torch.save(trained.state_dict(), folder / f"student_{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
