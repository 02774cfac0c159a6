"""Latency matrix: a dense D x D layer against its rank-r factorisation, batch 1 to 65536.

    python bench/latency.py                          # CPU, and CUDA when present
    python bench/latency.py --dim 1280 --rank 64 --threads 2 --devices cpu

Writes bench/results/latency_<device>.json per device: median and interquartile range of each
(batch, dtype, mode), the speedup, the theoretical FLOP ratio, and the break-even batch size.
On CUDA it runs fp32 and bf16, eager, CUDA-graph replay (10 passes per graph) and the fused
kernel's two modes, and records the copy bandwidth, each row's memory floor and the kernel's
error; on the CPU fp32 eager with the thread count fixed (--threads) and recorded. Batches
that would not fit in memory are skipped and listed. --split-k lets the kernel's tuning try its
opt-in split-K plans too (batches of one row block: 1 to 32 rows), into a file of its own.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from distil_rank.benchmark.latency import environment, latency_matrix, modes_for, name_slug
from distil_rank.benchmark.report import latency_table
from distil_rank.errors import OneLineParser, at_least
from distil_rank.files import writable_folder, write_json
from distil_rank.kernels.fused import split_k_enabled
from distil_rank.runtime import add_threads_option, apply_threads, freeze_imports

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    p = OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=at_least(1), default=1280, help="layer width D (ESM-2 650M: 1280)")
    p.add_argument("--rank", type=at_least(1), default=64, help="rank r of the factorisation")
    p.add_argument("--batches", default="1,32,256,4096,65536")
    p.add_argument("--devices", default="auto",
                   help="auto (cpu, plus cuda when present), cpu, cuda")
    p.add_argument("--repeats", type=at_least(1), default=100, help="timed calls per cell, at most")
    p.add_argument("--budget", type=float, default=2.0,
                   help="seconds per cell: fewer calls when one call is slow (at least 5)")
    p.add_argument("--out-dir", type=writable_folder, default=str(ROOT / "bench" / "results"))
    p.add_argument("--split-k", action="store_true",
                   help="let the fused kernel's tuning try split-K plans too (opt-in until they "
                   "have run on a GPU: distil_rank/kernels/fused.py, split_k_enabled); the file "
                   "name ends in _splitk")
    add_threads_option(p)
    args = p.parse_args()
    if args.rank > args.dim:
        p.error(f"--rank {args.rank}: above --dim {args.dim}")
    try:
        batches = tuple(int(b) for b in args.batches.split(","))
    except ValueError:
        p.error(f"--batches {args.batches!r}: expected whole numbers separated by commas")
    if min(batches) < 1 or args.budget <= 0:
        p.error("--batches and --budget: every batch at least 1, the budget above 0")
    if args.split_k:
        os.environ["DISTIL_RANK_SPLIT_K"] = "1"

    apply_threads(args.threads)  # fixed for the whole run
    devices = ["cpu", "cuda"] if args.devices == "auto" else [args.devices]
    if "cuda" in devices and not torch.cuda.is_available():
        if args.devices == "cuda":
            sys.exit("error: --devices cuda: CUDA is not available on this machine")
        devices.remove("cuda")
    failed = False
    for name in devices:
        device = torch.device(name)
        cuda = device.type == "cuda"
        matrix = latency_matrix(
            args.dim, args.dim, args.rank, device, batches=batches,
            dtypes=(torch.float32, torch.bfloat16) if cuda else (torch.float32,),
            modes=modes_for(device),
            repeats=args.repeats, budget_s=args.budget,
        )
        matrix["split_k_plans"] = split_k_enabled() if cuda else None
        report = {"environment": environment(device), "matrix": matrix}
        suffix = "_splitk" if args.split_k else ""
        name = f"latency_{name_slug(matrix['device'])}_d{args.dim}_r{args.rank}{suffix}.json"
        out = Path(args.out_dir) / name
        write_json(out, report)
        print("\n".join(latency_table(matrix, "latency matrix", console=True)))
        print(f"wrote {out}")
        wrong = [r for r in matrix["rows"] if not r.get("fused", {}).get("within_rounding", True)]
        for r in wrong:
            print(f"error: the fused kernel is wrong at batch {r['batch']} ({r['dtype']}): "
                  f"error {r['fused']['max_relative_error']:.3g}, the two products' "
                  f"{r['fused']['two_products_error']:.3g}", file=sys.stderr)
        failed = failed or bool(wrong)
    return 1 if failed else 0


if __name__ == "__main__":
    freeze_imports()
    sys.exit(main())
