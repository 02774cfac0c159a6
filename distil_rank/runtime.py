"""Seeds and devices: what every stage needs, owned by no stage (library code never imports the
benchmark's Config)."""

from __future__ import annotations

import zlib

import torch

from distil_rank.errors import InputError


def stage_seed(seed: int, stage: str) -> int:
    """A seed per stage, so that changing one stage's draws does not shift another's."""
    return (seed * 1_000_003 + zlib.crc32(stage.encode())) % (2**31)


def resolve_device(name: str) -> torch.device:
    """--device as a torch.device that exists here, or one line saying why not."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name!r}: unknown device, expected auto, cpu, cuda or "
                         "cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise InputError(f"--device {name!r}: only cpu and cuda are supported")
    if not torch.cuda.is_available():
        raise InputError(f"--device {name!r}: CUDA is not available on this machine")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"--device {name!r}: only {torch.cuda.device_count()} CUDA device(s)")
    return device
