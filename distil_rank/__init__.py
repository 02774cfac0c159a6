"""Distil-Rank: compress the dense projections on top of protein language model embeddings."""

from distil_rank.errors import InputError
from distil_rank.lowrank import LowRankLinear

__all__ = ["InputError", "LowRankLinear"]
