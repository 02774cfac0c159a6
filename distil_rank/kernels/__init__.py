"""The factorised layer's forward, below the layer that calls it: the reference path here, the
fused Triton kernel, its plan and its tuning in `fused`, and the clock the tuning reads in
`clock`. Nothing here imports the rest of the project."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def two_products(x: torch.Tensor, down: torch.Tensor, up: torch.Tensor,
                 bias: torch.Tensor | None) -> torch.Tensor:
    """x down^T, written out, then times up^T plus bias: a factorised layer without the fused
    kernel (`fused.fused_lowrank` replaces it and is checked against it)."""
    return F.linear(F.linear(x, down), up, bias)
