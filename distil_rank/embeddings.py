"""Embedding files: load and validate them, save them, and split their rows.

Accepted files:
  .pt/.pth  a dict {"embeddings": [N, D] tensor, optional "fitness": [N], "position": [N],
            "provenance": {...}} (the format shipped here and written by the embedding tool),
            or a bare 2-D tensor saved with torch.save. Always loaded with weights_only=True,
            so a file cannot run code.
  .npy      a 2-D array (loaded with allow_pickle=False).
  .npz      arrays "embeddings" (or "emb"), optional "fitness", "position" (or "pos").
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from distil_rank.errors import InputError, first_line
from distil_rank.files import atomic_write

EMBEDDING_KEYS = ("embeddings", "emb")
POSITION_KEYS = ("position", "pos")


@dataclass
class EmbeddingSet:
    embeddings: torch.Tensor  # [N, D] float32
    fitness: torch.Tensor | None = None  # [N] float32, a measured property to probe downstream
    position: torch.Tensor | None = None  # [N] int64, e.g. the mutated residue
    ids: list[str] | None = None  # one identifier per row, when the source has them
    provenance: dict = field(default_factory=dict)
    source: str = ""  # the file it came from, or "synthetic"

    @property
    def num_rows(self) -> int:
        return self.embeddings.shape[0]

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]


# ----------------------------------------------------------------------------- loading


def _read_pt(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt file can fail anywhere inside the unpickler
        with path.open("rb") as handle:
            pickled = handle.read(1) == b"\x80"  # a pickle's protocol mark
        if isinstance(err, pickle.UnpicklingError) and (pickled or zipfile.is_zipfile(path)):
            raise InputError(f"{path}: holds Python objects, not plain tensors: refused to "
                             "unpickle (an embedding file must not be able to run code)") from None
        if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; this is not one
            raise InputError(f"{path}: not a tensor file written by torch.save (text, or another "
                             "format?)") from None
        raise InputError(f"{path}: not a readable torch file ({first_line(err)})") from None


def _read_numpy(path: Path):
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as err:  # ValueError for pickled objects, OSError/BadZipFile for corruption
        raise InputError(f"{path}: not a readable numpy file ({first_line(err)})") from None
    if isinstance(loaded, np.ndarray):
        return loaded
    with loaded:
        try:  # members are read lazily: an object array is refused only here
            return {name: loaded[name] for name in loaded.files}
        except Exception as err:
            raise InputError(f"{path}: an array in it cannot be read without unpickling "
                             f"objects, or is corrupt ({first_line(err)})") from None


MAX_ABS_VALUE = 1e15  # beyond this, squares and sums in float32 are no longer trustworthy


def numeric_array(path, name: str, value: np.ndarray) -> np.ndarray:
    """A numpy array of real numbers in native byte order (native float16/32/64 as they are,
    other floats as float64, integers as int64), or one line saying why not. Every dtype and
    byte order numpy can write is read or refused here."""
    kind = value.dtype.kind
    if kind == "b":
        raise InputError(f"{path}: '{name}' holds booleans, expected numbers")
    if kind == "c":
        raise InputError(f"{path}: '{name}' holds complex numbers, expected real numbers")
    if kind not in "iuf":  # objects, strings, bytes, dates, durations, structured records
        raise InputError(f"{path}: '{name}' has dtype {value.dtype}, expected numbers")
    if kind == "f" and value.dtype.isnative and value.dtype.itemsize in (2, 4, 8):
        return value  # float16/32/64 in this machine's byte order: torch reads it as it is
    return value.astype(np.float64 if kind == "f" else np.int64)  # native order, a copy


def _as_tensor(path: Path, name: str, value) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(numeric_array(path, name, value))
    if not isinstance(value, torch.Tensor):
        raise InputError(f"{path}: '{name}' is a {type(value).__name__}, expected a tensor")
    if value.layout != torch.strided:
        raise InputError(f"{path}: '{name}' is a {str(value.layout).replace('torch.', '')} "
                         "tensor, expected a dense one")
    if value.is_quantized:
        raise InputError(f"{path}: '{name}' is a quantized tensor, expected plain numbers")
    if value.device.type != "cpu":  # e.g. a meta tensor: a shape with no numbers behind it
        raise InputError(f"{path}: '{name}' is a tensor on the {value.device.type} device, which "
                         "holds no readable values; expected a CPU tensor")
    if value.is_complex() or value.dtype == torch.bool:
        raise InputError(f"{path}: '{name}' has dtype {value.dtype}, expected real numbers")
    return value.detach()  # a tensor saved with requires_grad brings no graph along


def _pick(obj: dict, keys: tuple[str, ...]):
    for key in keys:
        if key in obj:
            return obj[key]
    return None


def load_embeddings(path: str | Path, min_rows: int = 2) -> EmbeddingSet:
    """Read one embedding file and check it: 2-D, at least `min_rows` rows and 2 columns,
    finite; its labels, when it has any, one per row."""
    path = Path(path)
    raw, labels = _unpack(path, _read(path))
    embeddings = _checked_embeddings(path, raw, min_rows)
    fitness, position, ids = _checked_labels(path, len(embeddings), *labels[:3])
    return EmbeddingSet(embeddings=embeddings, fitness=fitness, position=position, ids=ids,
                        provenance=dict(labels[3]), source=str(path))


def _read(path: Path):
    """The file's object, refusing before any read what is not a regular file (a folder, a
    device such as /dev/zero, a FIFO) or not of a known type."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected an embedding file")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file (a device, a FIFO or a socket): refused "
                         "before reading")
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pth"):
        return _read_pt(path)
    if suffix in (".npy", ".npz"):
        return _read_numpy(path)
    raise InputError(f"{path}: unknown file type '{suffix}', expected .pt, .pth, .npy or .npz")


def _unpack(path: Path, obj):
    """(the raw embeddings, (fitness, position, ids, provenance)) of a file's object."""
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return obj, (None, None, None, {})
    if not isinstance(obj, dict):
        raise InputError(f"{path}: holds a {type(obj).__name__}, expected a 2-D tensor or a "
                         "dict with 'embeddings'")
    raw = _pick(obj, EMBEDDING_KEYS)
    if raw is None:
        keys = ", ".join(repr(k) for k in obj) or "none"
        raise InputError(f"{path}: dict has no 'embeddings' entry (keys: {keys})")
    provenance = obj.get("provenance") or {}
    if not isinstance(provenance, dict):
        raise InputError(f"{path}: 'provenance' is a {type(provenance).__name__}, expected a dict")
    return raw, (obj.get("fitness"), _pick(obj, POSITION_KEYS), obj.get("ids"), provenance)


def _checked_embeddings(path: Path, raw, min_rows: int) -> torch.Tensor:
    embeddings = _as_tensor(path, "embeddings", raw)
    if embeddings.dim() != 2:
        raise InputError(
            f"{path}: embeddings have shape {tuple(embeddings.shape)}, expected 2-D [N, D]")
    n, d = embeddings.shape
    if n < max(min_rows, 1):
        what = "empty (0 rows)" if n == 0 else f"{n} row(s), need at least {min_rows} embeddings"
        raise InputError(f"{path}: {what}")
    if d < 2:
        raise InputError(f"{path}: dimension {d}, need at least 2 columns")
    wide = embeddings.to(torch.float64)
    finite = torch.isfinite(wide).all(dim=1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten()
        raise InputError(f"{path}: {bad.numel()} row(s) hold NaN or Inf (first: row "
                         f"{int(bad[0])})")
    largest = wide.abs().max().item()
    if largest > MAX_ABS_VALUE:
        raise InputError(f"{path}: values as large as {largest:.3g}; beyond {MAX_ABS_VALUE:.0e} "
                         "float32 arithmetic overflows or loses all precision: rescale them")
    return embeddings.to(torch.float32).contiguous()


def _checked_labels(path: Path, n: int, fitness, position, ids):
    if fitness is not None:
        fitness = _as_tensor(path, "fitness", fitness).to(torch.float32).flatten()
        if fitness.numel() != n:
            raise InputError(f"{path}: 'fitness' has {fitness.numel()} values for {n} embeddings")
        if not bool(torch.isfinite(fitness).all()):
            raise InputError(f"{path}: 'fitness' holds NaN or Inf (or values beyond float32)")
    if position is not None:
        position = _as_tensor(path, "position", position).flatten()
        if position.is_floating_point():
            whole = torch.isfinite(position) & (position == position.round())
            if not bool(whole.all()):
                bad = position[~whole][0].item()
                raise InputError(f"{path}: 'position' holds {bad}, not a whole number (a "
                                 "residue position is one)")
        position = position.to(torch.int64)
        if position.numel() != n:
            raise InputError(f"{path}: 'position' has {position.numel()} values for {n} embeddings")
    if ids is not None:
        if not isinstance(ids, (list, tuple)) or len(ids) != n:
            raise InputError(f"{path}: 'ids' must be a list of {n} strings")
        ids = [str(i) for i in ids]
    return fitness, position, ids


def embeddings_payload(data: EmbeddingSet) -> dict:
    """The dict format that load_embeddings reads (plain tensors, lists and strings only)."""
    payload: dict = {"embeddings": data.embeddings.to(torch.float32).contiguous()}
    if data.fitness is not None:
        payload["fitness"] = data.fitness
    if data.position is not None:
        payload["position"] = data.position
    if data.ids is not None:
        payload["ids"] = list(data.ids)
    payload["provenance"] = dict(data.provenance)
    return payload


def save_embeddings(path: str | Path, data: EmbeddingSet) -> None:
    """Write one embedding file, atomically."""
    atomic_write(path, lambda tmp: torch.save(embeddings_payload(data), tmp))


# ----------------------------------------------------------------------------- choosing the data


def split_indices(n: int, held_fraction: float, seed: int,
                  min_rows: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded split of range(n) into (kept, held out), both sorted: about `held_fraction` of
    the rows held out, and at least `min_rows` on each side. The one row split of the project
    (selection rows, the API's refinement hold-out, the embedding tool's --split)."""
    if n < 2 * min_rows:
        raise ValueError(f"{n} rows cannot be split into two parts of at least {min_rows}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    held = max(min_rows, min(n - min_rows, round(held_fraction * n)))
    return order[held:].sort().values, order[:held].sort().values
