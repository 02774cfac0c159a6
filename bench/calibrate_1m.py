"""Streaming calibration at scale: 1,000,000 x 1280 float32 embeddings on disk (5.1 GB).

    python bench/calibrate_1m.py                       # data under /tmp/distil_rank_1m
    python bench/calibrate_1m.py --rows 200000         # a smaller run

1. Writes the rows as 10 .npy shards of structured synthetic embeddings (seeded; skipped when
   the shards already exist with the right shape).
2. Runs `python -m distil_rank.calibrate` over them in a child process and reads the child's
   peak resident memory (ru_maxrss) and wall time.
3. Computes the same statistics the textbook way with every row in memory (one float32 array,
   exact two-pass float64: the mean, then the centred Gram matrix) and reports the largest
   difference from the streamed result.
Writes bench/results/calibrate_<rows>_<dim>.json.
"""

from __future__ import annotations

import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from distil_rank.benchmark.latency import environment
from distil_rank.errors import OneLineParser, at_least
from distil_rank.files import write_json
from distil_rank.moments import load_moments
from distil_rank.runtime import add_threads_option, apply_threads, freeze_imports

ROOT = Path(__file__).resolve().parents[1]


def write_shards(folder: Path, rows: int, dim: int, shards: int, seed: int = 0) -> list[Path]:
    """Common mean (norm 8), power-law spectrum on a 48-d subspace, 1% isotropic floor."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=dim)
    mean = 8 * mean / np.linalg.norm(mean)
    basis, _ = np.linalg.qr(rng.normal(size=(dim, 48)))
    scales = np.arange(1, 49) ** -0.6  # standard deviations: variances k^-1.2
    floor = math.sqrt(0.01 * (scales**2).sum() / dim)
    paths = []
    per = math.ceil(rows / shards)
    for i in range(shards):
        n = min(per, rows - i * per)
        path = folder / f"shard{i:03d}.npy"
        paths.append(path)
        if path.exists() and np.load(path, mmap_mode="r").shape == (n, dim):
            continue
        shard_rng = np.random.default_rng(seed + 1 + i)
        latent = shard_rng.standard_normal((n, 48), dtype=np.float32) * scales.astype(np.float32)
        x = latent @ basis.T.astype(np.float32)
        x += floor * shard_rng.standard_normal((n, dim), dtype=np.float32)
        x += mean.astype(np.float32)
        np.save(path, x)
        del x, latent
    return paths


def in_memory_reference(paths: list[Path], chunk: int = 32768):
    """All rows loaded into one float32 array; exact two-pass float64 mean and covariance."""
    data = np.concatenate([np.load(p) for p in paths])
    x = torch.from_numpy(data)
    n, dim = x.shape
    total = torch.zeros(dim, dtype=torch.float64)
    for start in range(0, n, chunk):
        total += x[start:start + chunk].double().sum(0)
    mean = total / n
    gram = torch.zeros(dim, dim, dtype=torch.float64)
    for start in range(0, n, chunk):
        centred = x[start:start + chunk].double() - mean
        gram += centred.T @ centred
    return n, mean, gram / n, data.nbytes


def main() -> None:
    p = OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=at_least(2), default=1_000_000)
    p.add_argument("--dim", type=at_least(1), default=1280)
    p.add_argument("--shards", type=at_least(1), default=10)
    p.add_argument("--batch-rows", type=at_least(1), default=16384)
    p.add_argument("--dir", default="/tmp/distil_rank_1m")
    p.add_argument("--skip-reference", action="store_true",
                   help="skip the in-memory comparison (it needs rows x dim x 4 bytes of RAM)")
    add_threads_option(p)
    args = p.parse_args()
    apply_threads(args.threads)

    folder = Path(args.dir)
    start = time.perf_counter()
    paths = write_shards(folder, args.rows, args.dim, args.shards)
    write_s = time.perf_counter() - start
    on_disk = sum(path.stat().st_size for path in paths)
    print(f"{args.rows:,} x {args.dim} float32 in {len(paths)} shards, {on_disk / 1e9:.2f} GB "
          f"on disk ({write_s:.0f} s to write or check)", flush=True)

    out = folder / "moments.pt"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "distil_rank.calibrate", "--shards",
                    *map(str, paths), "--out", str(out), "--batch-rows", str(args.batch_rows)],
                   cwd=ROOT, check=True)
    stream_s = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    streamed = load_moments(out)
    report = {
        "rows": args.rows, "dim": args.dim, "shards": len(paths), "bytes_on_disk": on_disk,
        "batch_rows": args.batch_rows,
        "stream_seconds": stream_s, "seconds_per_million_rows": stream_s / (args.rows / 1e6),
        "stream_peak_rss_mib": peak_mib,
        "environment": environment(torch.device("cpu")),
    }
    print(f"streamed: {stream_s:.1f} s ({report['seconds_per_million_rows']:.1f} s per million "
          f"rows, process start included), peak resident memory {peak_mib:.0f} MiB", flush=True)

    if not args.skip_reference:
        start = time.perf_counter()
        n, mean, covariance, nbytes = in_memory_reference(paths)
        scale = covariance.abs().max().item()
        report.update({
            "reference_seconds": time.perf_counter() - start,
            "reference_bytes_in_memory": nbytes,
            "count_matches": n == streamed.count,
            "max_abs_mean_difference": (mean - streamed.mean).abs().max().item(),
            "max_abs_covariance_difference": (covariance - streamed.covariance).abs().max().item(),
            "max_relative_covariance_difference":
                (covariance - streamed.covariance).abs().max().item() / scale,
        })
        print(f"against all rows in memory ({nbytes / 1e9:.1f} GB, two-pass float64): max |mean "
              f"difference| {report['max_abs_mean_difference']:.2e}, max |covariance difference| "
              f"{report['max_abs_covariance_difference']:.2e} "
              f"({report['max_relative_covariance_difference']:.1e} of the largest entry)")
    path = ROOT / "bench" / "results" / f"calibrate_{args.rows}x{args.dim}.json"
    write_json(path, report)
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    freeze_imports()
    main()
