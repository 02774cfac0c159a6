"""The benchmark's data: the shipped or given embedding files, or the synthetic stand-in when
both default files are absent (and the run says so)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from distil_rank.embeddings import EmbeddingSet, load_embeddings
from distil_rank.errors import InputError


@dataclass
class Dataset:
    train: EmbeddingSet
    val: EmbeddingSet
    real_data: bool
    note: str  # one line for the console and the JSON: where the data came from
    val_rows_in_train: int = 0  # validation rows that are also, bit for bit, training rows


# Where the shipped embeddings live: the clone's root, beside main.py. A run started from any
# other folder reads them there (an installed, non-editable package has no such folder).
SHIPPED_FOLDER = Path(__file__).resolve().parents[2]


def default_files(default_paths: tuple[str, str], shipped: Path | None) -> tuple[str, str]:
    """The default files as found: in the working directory when either is there, else in the
    shipped folder when either is there, else as named (both absent)."""
    folders = [Path(".")] + ([shipped] if shipped is not None else [])
    for folder in folders:
        found = tuple(str(folder / p) if folder != Path(".") else p for p in default_paths)
        if any(Path(p).exists() for p in found):
            return found
    return tuple(default_paths)


def _tried(default_paths: tuple[str, str], shipped: Path | None) -> str:
    places = [Path.cwd()] + ([shipped] if shipped is not None else [])
    return " or ".join(dict.fromkeys(f"{folder.resolve()}/{{{','.join(default_paths)}}}"
                                     for folder in places))


def resolve_data(
    train_path: str,
    val_path: str,
    mode: str,
    default_paths: tuple[str, str],
    synthetic: dict,
    seed: int,
    shipped: Path | None = SHIPPED_FOLDER,
) -> Dataset:
    """The embeddings a run uses. The default files are looked for in the working directory,
    then in `shipped` (the clone's root), so that a run from any folder reads the shipped data.
    Synthetic only when asked, or when both default files are absent from both places (the note
    names where it looked); any other missing file is an error, never a quiet switch to other
    data."""
    if mode not in ("auto", "real", "synthetic"):
        raise InputError(f"--data {mode!r}: expected auto, real or synthetic")
    using_defaults = (train_path, val_path) == tuple(default_paths)
    if using_defaults:
        train_path, val_path = default_files(default_paths, shipped)
    if mode == "synthetic" or (
        mode == "auto"
        and using_defaults
        and not Path(train_path).exists()
        and not Path(val_path).exists()
    ):
        train, val = synthetic_embeddings(seed=seed, **synthetic)
        why = "as asked (--data synthetic)" if mode == "synthetic" else (
            f"because no embedding file was found at {_tried(default_paths, shipped)}"
        )
        return Dataset(train, val, real_data=False, note=f"SYNTHETIC embeddings {why}")
    missing = [p for p in (train_path, val_path) if not Path(p).exists()]
    if missing and using_defaults and mode == "real" and len(missing) == 2:
        raise InputError(f"{missing[0]}: no such file (looked at {_tried(default_paths, shipped)})")
    if len(missing) == 1 and using_defaults:
        raise InputError(
            f"{missing[0]}: no such file, but its partner exists; "
            "restore it, or pass --train and --val, or --data synthetic"
        )
    if all(Path(p).exists() for p in (train_path, val_path)) and \
            os.path.samefile(train_path, val_path):
        raise InputError(f"{val_path}: the same file as --train {train_path}: every held-out "
                         "figure would be measured on training rows")
    train = load_embeddings(train_path)
    val = load_embeddings(val_path)
    if train.dim != val.dim:
        raise InputError(
            f"{val_path}: dimension {val.dim} differs from {train_path}'s dimension {train.dim}"
        )
    return Dataset(train, val, real_data=True,
                   note=f"{describe_embeddings(train.provenance)}, from {train_path} and "
                        f"{val_path}",
                   val_rows_in_train=rows_also_in(val.embeddings, train.embeddings))


# ----------------------------------------------------------------------------- synthetic stand-in


def synthetic_embeddings(
    *, n_train: int, n_val: int, dim: int, latent_dim: int, seed: int
) -> tuple[EmbeddingSet, EmbeddingSet]:
    """Structured synthetic embeddings with what real mean-pooled PLM embeddings have:
    a large common mean (norm 8 against a spread of norm about 1 per vector), a power-law spectrum
    on a low-dimensional subspace (intrinsic dimension `latent_dim`), and a small isotropic floor.

    A planted, nonlinear `fitness` label makes the Fitness-Head teacher exist here too. With u_k
    the k-th latent coordinate standardised: tanh(u_0) u_1 + 0.5 sin(2 u_5) + 0.3 u_20^2 + 0.1 e,
    e standard normal; components 5 and 20 (of latent_dim) carry little variance, as
    fitness-relevant directions of real embeddings can.
    """
    g = torch.Generator().manual_seed(seed)
    n = n_train + n_val
    mean = torch.randn(dim, generator=g, dtype=torch.float64)
    mean = 8.0 * mean / mean.norm()
    basis, _ = torch.linalg.qr(torch.randn(dim, latent_dim, generator=g, dtype=torch.float64))
    variances = torch.arange(1, latent_dim + 1, dtype=torch.float64) ** -1.2
    floor = 0.01 * variances.sum() / dim  # isotropic floor: 1% of the latent variance, spread out
    scale = 1.0 / math.sqrt(variances.sum() + floor * dim)  # expected centred norm: 1
    latent = torch.randn(n, latent_dim, generator=g, dtype=torch.float64) * variances.sqrt()
    noise = torch.randn(n, dim, generator=g, dtype=torch.float64) * floor.sqrt()
    x = (mean + scale * (latent @ basis.T + noise)).to(torch.float32)
    u = latent / variances.sqrt()
    k5, k20 = min(5, latent_dim - 1), min(20, latent_dim - 1)
    fitness = (torch.tanh(u[:, 0]) * u[:, min(1, latent_dim - 1)] + 0.5 * torch.sin(2 * u[:, k5])
               + 0.3 * u[:, k20] ** 2 + 0.1 * torch.randn(n, generator=g, dtype=torch.float64))
    fitness = fitness.to(torch.float32)
    provenance = {
        "source": "synthetic",
        "generator": "distil_rank.benchmark.data.synthetic_embeddings",
        "seed": seed,
        "mean_norm": 8.0,
        "latent_dim": latent_dim,
        "spectrum": "power law k^-1.2 on a random latent subspace, plus a 1% isotropic floor",
        "fitness": "planted: tanh(u0) u1 + 0.5 sin(2 u5) + 0.3 u20^2 + 0.1 noise, u the "
                   "standardised latent coordinates",
    }
    return tuple(EmbeddingSet(embeddings=x[rows].clone(), fitness=fitness[rows].clone(),
                              provenance=provenance, source="synthetic")
                 for rows in (slice(0, n_train), slice(n_train, n)))


def rows_also_in(rows: torch.Tensor, reference: torch.Tensor) -> int:
    """How many of `rows` are, bit for bit, a row of `reference`: validation rows that are also
    training rows measure nothing held out."""
    seen = {bytes(row.numpy().tobytes()) for row in reference.contiguous()}
    return sum(bytes(row.numpy().tobytes()) in seen for row in rows.contiguous())


def describe_embeddings(provenance: dict) -> str:
    """What real embeddings are, from their provenance: ESM-2 only where it says so."""
    model = str(provenance.get("model", ""))
    what = (f"ESM-2 embeddings ({model})" if "esm2" in model.lower() else
            f"embeddings from {model}" if model else "embeddings of unrecorded origin")
    proteins = provenance.get("proteins")
    return f"{what} of {proteins}" if proteins else what
