"""Calibrate the closed form on embedding sets far larger than memory, on one machine or many.

    python -m distil_rank.calibrate --shards 'emb/*.npy' --out moments.pt
    torchrun --nproc-per-node 4 -m distil_rank.calibrate --shards 'emb/*.npy' --out moments.pt

The closed form needs only the count, mean and covariance of the inputs. Each shard is read in
batches of --batch-rows rows (.npy shards by file offset, so a shard never has to fit in memory;
.pt and .npz shards are loaded one at a time), accumulated in float64 and merged with the
pairwise update of Chan et al. (distil_rank.moments). Under torchrun every process reads its own
shards (shard i goes to rank i mod world size) and the partial statistics are all-reduced with
torch.distributed (gloo on the CPU, nccl on GPUs); rank 0 writes the result.

The output is a .pt dict of plain tensors {"count", "mean", "covariance"} (load_moments reads it
with weights_only=True); compress_linear(layer, load_moments(path), rank=...) uses it directly.
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

from distil_rank.data import load_embeddings
from distil_rank.errors import InputError, cli_exit_code
from distil_rank.lowrank import InputMoments
from distil_rank.moments import MomentAccumulator


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
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise InputError(f"{path}: not a readable .npy shard ({first})") from None
        if dtype is None:
            dtype = np.load(path, mmap_mode="r").dtype
        if dtype.hasobject:
            raise InputError(f"{path}: shard holds Python objects, expected numbers")
        if len(shape) != 2:
            raise InputError(f"{path}: shard has shape {shape}, expected 2-D [N, D]")
        if dtype.kind not in "fiu":
            raise InputError(f"{path}: shard has dtype {dtype}, expected numbers")
        if shape[0] == 0:
            raise InputError(f"{path}: empty shard (0 rows)")
        if fortran_order:  # column-major: rows are not contiguous, fall back to a memory map
            rows = np.load(path, mmap_mode="r", allow_pickle=False)
            for start in range(0, shape[0], batch_rows):
                yield start, np.array(rows[start:start + batch_rows])
            return
        for start in range(0, shape[0], batch_rows):
            count = min(batch_rows, shape[0] - start)
            batch = np.fromfile(f, dtype=dtype, count=count * shape[1])
            if batch.size != count * shape[1]:
                raise InputError(f"{path}: file ends at row {start + batch.size // shape[1]} of "
                                 f"{shape[0]} (truncated shard)")
            yield start, batch.reshape(count, shape[1])


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
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"{path}: not a readable numpy shard ({first})") from None


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
        if rows.ndim != 2:
            raise InputError(f"{path}: shard has shape {rows.shape}, expected 2-D [N, D]")
        if rows.dtype.kind not in "fiu":
            raise InputError(f"{path}: shard has dtype {rows.dtype}, expected numbers")
        if rows.shape[0] == 0:
            raise InputError(f"{path}: empty shard (0 rows)")
        for start in range(0, rows.shape[0], batch_rows):
            yield start, torch.from_numpy(np.array(rows[start:start + batch_rows]))
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


def all_reduce_moments(local: MomentAccumulator, group=None) -> MomentAccumulator:
    """Combine every process's partial statistics; all processes get the same result.

    Two all-reduces, both of sums: first count and count * mean (the global mean), then each
    process's M2 + n_i (mean_i - mean)(mean_i - mean)^T, whose sum is the global M2. This is
    the pairwise merge for many parts at once; no large sums are subtracted.
    """
    device = local.mean.device
    if dist.get_backend(group) == "nccl" and device.type != "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    head = torch.cat([torch.tensor([float(local.count)], dtype=torch.float64),
                      local.mean.cpu() * local.count]).to(device)
    dist.all_reduce(head, group=group)
    total = int(round(head[0].item()))
    if total == 0:
        raise InputError("no calibration rows on any process")
    mean = head[1:] / total
    delta = local.mean.to(device) - mean
    m2 = local.m2.to(device) + torch.outer(delta, delta) * local.count
    dist.all_reduce(m2, group=group)
    merged = MomentAccumulator(local.dim, device=local.mean.device)
    merged.count, merged.mean, merged.m2 = total, mean.to(local.mean.device), m2.to(local.mean.device)
    return merged


def shards_for_rank(paths: list[str], rank: int, world_size: int) -> list[str]:
    return sorted(paths)[rank::world_size]


def save_moments(path: str | Path, moments: InputMoments, **provenance) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"count": torch.tensor(moments.count), "mean": moments.mean,
                "covariance": moments.covariance, "provenance": provenance}, tmp)
    tmp.replace(path)


def load_moments(path: str | Path) -> InputMoments:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise InputError(f"{path}: not a readable moments file ({type(err).__name__})") from None
    if not isinstance(obj, dict) or not {"count", "mean", "covariance"} <= set(obj):
        raise InputError(f"{path}: expected a dict with count, mean and covariance")
    return InputMoments(int(obj["count"]), obj["mean"].double(), obj["covariance"].double())


def create_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Streamed input statistics for the closed form.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--shards", nargs="+", required=True,
                   help="shard files or glob patterns (.npy read in batches, .npz, .pt)")
    p.add_argument("--out", required=True, help="output .pt with count, mean, covariance")
    p.add_argument("--batch-rows", type=int, default=16384, help="rows read at a time")
    return p


def run(args: argparse.Namespace) -> InputMoments:
    paths = []
    for pattern in args.shards:
        matches = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        if not matches:
            raise InputError(f"{pattern}: no shard matches")
        paths += matches
    world = int(os.environ.get("WORLD_SIZE", "1"))
    started = world > 1 and not dist.is_initialized()
    if started:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    rank = dist.get_rank() if dist.is_initialized() else 0
    try:
        start = time.perf_counter()
        mine = shards_for_rank(paths, rank, world)
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
        if rank == 0:
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
    return cli_exit_code(run, create_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
