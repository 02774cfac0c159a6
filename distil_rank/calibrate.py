"""Calibrate the closed form on embedding sets far larger than memory, on one machine or many.

    python -m distil_rank.calibrate --shards 'emb/*.npy' --out moments.pt
    torchrun --nproc-per-node 4 -m distil_rank.calibrate --shards 'emb/*.npy' --out moments.pt

The closed form needs only the count, mean and covariance of the inputs. Each shard is read in
batches of --batch-rows rows (.npy shards by file offset, so a shard never has to fit in memory;
.pt and .npz shards are loaded one at a time), accumulated in float64 and merged with the
pairwise update of Chan et al. (distil_rank.moments). Under torchrun every process reads its own
shards (shard i goes to process i mod world size) and the partial statistics are all-reduced with
torch.distributed (gloo on the CPU, nccl on GPUs); process 0 writes the result.

The output is a .pt dict of plain tensors {"count", "mean", "covariance"}; load_moments (in
distil_rank.moments) reads it with weights_only=True, and
compress_linear(layer, load_moments(path), rank=...) uses it directly.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from distil_rank.embeddings import load_embeddings, numeric_array
from distil_rank.errors import InputError, OneLineParser, cli_exit_code, first_line
from distil_rank.files import check_writable_file
from distil_rank.moments import InputMoments, MomentAccumulator, all_reduce_moments, save_moments
from distil_rank.runtime import add_threads_option, apply_threads, freeze_imports


def _npy_batches(path: Path, batch_rows: int):
    """(first row, array) batches of a C-ordered 2-D .npy file, read by offset: only one batch is
    ever in memory. (A memory map would do the same work, but every page it touches counts as
    resident memory until the map closes, which for a 512 MB shard is 512 MB.)"""
    with path.open("rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(f)
            else:  # a header format without a public reader: let numpy map it
                shape, fortran_order, dtype = np.load(path, mmap_mode="r").shape, True, None
        except Exception as err:  # not an .npy file at all
            raise InputError(f"{path}: not a readable .npy shard ({first_line(err)})") from None
        if dtype is None:
            dtype = np.load(path, mmap_mode="r").dtype
        if dtype.hasobject:
            raise InputError(f"{path}: shard holds Python objects, expected numbers")
        _check_shape(path, shape)
        numeric_array(path, "shard", np.zeros(0, dtype=dtype))  # refuses the dtype early
        if fortran_order:  # column-major: rows are not contiguous, fall back to a memory map
            try:
                rows = np.load(path, mmap_mode="r", allow_pickle=False)
            except Exception as err:
                raise InputError(f"{path}: not a readable .npy shard ({first_line(err)})") \
                    from None
            for start in range(0, shape[0], batch_rows):
                batch = np.asarray(rows[start:start + batch_rows])
                yield start, numeric_array(path, "shard", batch)
            return
        for start in range(0, shape[0], batch_rows):
            count = min(batch_rows, shape[0] - start)
            batch = np.fromfile(f, dtype=dtype, count=count * shape[1])
            if batch.size != count * shape[1]:
                raise InputError(f"{path}: file ends at row {start + batch.size // shape[1]} of "
                                 f"{shape[0]} (truncated shard)")
            yield start, numeric_array(path, "shard", batch.reshape(count, shape[1]))


def _check_shape(path: Path, shape: tuple) -> None:
    if len(shape) != 2:
        raise InputError(f"{path}: shard has shape {tuple(shape)}, expected 2-D [N, D]")
    if shape[0] == 0:
        raise InputError(f"{path}: empty shard (0 rows)")
    if shape[1] == 0:
        raise InputError(f"{path}: shard has 0 columns")


def _numpy_rows(path: Path):
    """The embeddings array of an .npz shard."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            for key in ("embeddings", "emb"):
                if key in npz.files:
                    return npz[key]
        raise InputError(f"{path}: no 'embeddings' array (arrays: {', '.join(npz.files)})")
    except InputError:
        raise
    except Exception as err:  # a corrupt or pickled file
        raise InputError(f"{path}: not a readable numpy shard ({first_line(err)})") from None


def shard_batches(path: str | Path, batch_rows: int):
    """Yield (first row index, float tensor [B, D]) over one shard, checking it as it goes."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such shard")
    if path.suffix == ".npy":
        for start, batch in _npy_batches(path, batch_rows):
            yield start, torch.from_numpy(batch)
        return
    if path.suffix == ".npz":
        rows = _numpy_rows(path)
        _check_shape(path, rows.shape)
        rows = numeric_array(path, "embeddings", rows)
        for start in range(0, rows.shape[0], batch_rows):
            yield start, torch.from_numpy(rows[start:start + batch_rows])
        return
    if path.suffix in (".pt", ".pth"):
        tensor = load_embeddings(path, min_rows=1).embeddings  # names the file and the row
        for start in range(0, tensor.shape[0], batch_rows):
            yield start, tensor[start:start + batch_rows]
        return
    raise InputError(f"{path}: unknown shard type '{path.suffix}', expected .npy, .npz or .pt")


def accumulate_shards(paths: list[str], batch_rows: int = 16384,
                      dim: int | None = None) -> MomentAccumulator:
    """One pass over the shards: count, mean and M2 in float64. Every shard must have the same
    dimension (the first shard's, or `dim`), be non-empty and hold finite numbers only."""
    accumulator = None if dim is None else MomentAccumulator(dim)
    first_path = None
    for path in paths:
        for start, batch in shard_batches(path, batch_rows):
            if accumulator is None:
                accumulator, first_path = MomentAccumulator(batch.shape[1]), path
            if batch.shape[1] != accumulator.dim:
                where = f"{first_path}'s" if first_path else "the expected"
                raise InputError(f"{path}: dimension {batch.shape[1]} differs from {where} "
                                 f"dimension {accumulator.dim}")
            finite = torch.isfinite(batch).all(dim=1)
            if not bool(finite.all()):
                bad = (~finite).nonzero().flatten()
                raise InputError(f"{path}: row {start + int(bad[0])} holds NaN or Inf "
                                 f"({int(bad.numel())} such row(s) in rows {start}.."
                                 f"{start + batch.shape[0] - 1})")
            accumulator.update(batch)
    if accumulator is None:
        raise InputError("no shards to calibrate on")
    return accumulator


def shards_for_process(paths: list[str], process_rank: int, world_size: int) -> list[str]:
    """Shard i goes to process i mod world_size, in sorted order."""
    return sorted(paths)[process_rank::world_size]


def create_parser() -> argparse.ArgumentParser:
    p = OneLineParser(description="Streamed input statistics for the closed form.")
    p.add_argument("--shards", nargs="+", required=True,
                   help="shard files or glob patterns (.npy read in batches, .npz, .pt)")
    p.add_argument("--out", required=True, help="output .pt with count, mean, covariance")
    p.add_argument("--batch-rows", type=int, default=16384,
                   help="rows read at a time (default: 16384)")
    add_threads_option(p)
    return p


def world_size() -> int:
    """1 for a plain process; torchrun's world size when torchrun started this one."""
    value = os.environ.get("WORLD_SIZE", "1")
    if not value.isdigit() or int(value) < 1:
        raise InputError(f"WORLD_SIZE={value!r}: expected a positive integer")
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if int(value) > 1 and missing:
        raise InputError(f"WORLD_SIZE={value} is set but {', '.join(missing)} is not: launch "
                         "with torchrun, or unset WORLD_SIZE to run as one process")
    return int(value)


def run(args: argparse.Namespace) -> InputMoments:
    if args.batch_rows < 1:
        raise InputError(f"--batch-rows {args.batch_rows}: must be at least 1")
    check_writable_file(args.out, "--out", (".pt",))
    apply_threads(args.threads)
    world = world_size()
    paths, seen = [], {}
    for pattern in args.shards:
        matches = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        if not matches:
            raise InputError(f"{pattern}: no shard matches")
        for path in matches:  # a shard read twice would count its rows twice
            resolved = Path(path).resolve()
            if resolved in seen:
                raise InputError(f"{path}: given twice (also as {seen[resolved]}): its rows "
                                 "would count twice in the statistics")
            seen[resolved] = path
        paths += matches
    started = world > 1 and not dist.is_initialized()
    if started:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    process_rank = dist.get_rank() if dist.is_initialized() else 0
    try:
        start = time.perf_counter()
        mine = shards_for_process(paths, process_rank, world)
        local = accumulate_shards(mine, args.batch_rows) if mine else None
        if world > 1:
            dim = torch.tensor([local.dim if local else 0])
            dist.all_reduce(dim, op=dist.ReduceOp.MAX)
            local = local or MomentAccumulator(int(dim.item()))
            result = all_reduce_moments(local)
        else:
            result = local
        moments = result.moments()
        seconds = time.perf_counter() - start
        if process_rank == 0:
            save_moments(args.out, moments, shards=sorted(paths), processes=world,
                         seconds=seconds)
            print(f"calibrated on {moments.count:,} rows of dimension {moments.mean.numel()} from "
                  f"{len(paths)} shard(s) with {world} process(es) in {seconds:.1f} s; "
                  f"wrote {args.out}")
        return moments
    finally:
        if started:
            dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    freeze_imports(argv)
    return cli_exit_code(run, create_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
