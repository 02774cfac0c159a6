import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


def correlated_inputs(n: int, dim: int, seed: int, mean_scale: float = 3.0) -> torch.Tensor:
    """Inputs with a common mean and a decaying, correlated spectrum (like embeddings)."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    scales = torch.logspace(0, -2, dim, dtype=torch.float64)
    mean = mean_scale * torch.randn(dim, generator=g, dtype=torch.float64)
    return mean + (torch.randn(n, dim, generator=g, dtype=torch.float64) * scales) @ mixing.T
