"""Distil-Rank: compress the dense projections on top of protein language model embeddings.

    from distil_rank import compress_linear, compress_model, save_compressed, load_compressed
    from distil_rank import quantise_int8  # int8 on top of low rank (weight-only: torchao)

The library (this package) never imports the benchmark (`distil_rank.benchmark`), and importing
it loads neither the benchmark nor matplotlib.
"""

from distil_rank.api import (
    CompressionConfig,
    compress_linear,
    compress_model,
    load_compressed,
    save_compressed,
)
from distil_rank.distill import DistillSettings
from distil_rank.errors import InputError
from distil_rank.lowrank import LowRankLinear
from distil_rank.quantise import quantise_int8

__version__ = "0.6.0"  # the one place: pyproject.toml reads it (tool.setuptools.dynamic)
__all__ = ["CompressionConfig", "DistillSettings", "InputError", "LowRankLinear", "__version__",
           "compress_linear", "compress_model", "load_compressed", "quantise_int8",
           "save_compressed"]
