"""Distil-Rank: compress the dense projections on top of protein language model embeddings."""

from distil_rank.errors import InputError
from distil_rank.lowrank import LowRankLinear

__version__ = "0.3.0"  # the one place: pyproject.toml reads it (tool.setuptools.dynamic)
__all__ = ["InputError", "LowRankLinear", "__version__"]
