"""What the compiler makes of the fused kernel for a Hopper GPU, with no GPU: every plan the
tuning may try for the latency matrix's shapes, compiled ahead of time for sm_90.

    python bench/fused_compile.py            # about 1 minute; needs Triton (its wheel has ptxas)

Writes bench/results/fused_compile_sm90.json: per dtype, batch and plan (for fp32 also bf16's
first guess, which fp32 used before it had blocks of its own), the registers per thread, the
stack frame and spill stores, shared memory, and the instruction counts that say whether the
products run on tensor cores (bf16) or FMA units (fp32, IEEE) and whether the input is staged
by asynchronous copies. The opt-in split-K plans (DISTIL_RANK_SPLIT_K=1) are compiled too,
marked "split", with their atomics and GPU-scope fences. Timing needs the GPU itself
(bench/latency.py); this says, before a GPU is lent, which plans would spill or fail to fit.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distil_rank.fused import candidates, compile_report, plan  # noqa: E402
from distil_rank.report import _table, write_json  # noqa: E402
from distil_rank.timing import environment  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--batches", default="1,32,256,4096,65536")
    p.add_argument("--capability", type=int, default=90, help="compute capability (90: H100/H200)")
    p.add_argument("--processors", type=int, default=132, help="multiprocessors (H100/H200: 132)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "fused_compile_sm90.json"))
    args = p.parse_args()
    try:
        import triton
    except ImportError:
        sys.exit("error: Triton is not installed: pip install triton")
    os.environ["DISTIL_RANK_SPLIT_K"] = "1"  # the opt-in plans too: candidates() reads it
    rows, table = [], []
    for dtype in (torch.float32, torch.bfloat16):
        for batch in (int(b) for b in args.batches.split(",")):
            shape = (batch, args.dim, args.dim, args.rank, args.processors)
            plans = candidates(*shape, torch.finfo(dtype).bits // 8)
            labels = ["first"] + ["split" if p_.k_split > 1 else "" for p_ in plans[1:]]
            if dtype == torch.float32:  # what fp32 got before it had blocks of its own
                plans, labels = plans + [plan(*shape, 2)], labels + ["bf16's"]
            for label, p_ in zip(labels, plans):
                report = compile_report(p_, batch, args.dim, args.dim, args.rank, dtype,
                                        capability=args.capability)
                rows.append({"dtype": str(dtype).removeprefix("torch."), "batch": batch,
                             "first_guess": label == "first", "bf16_blocks": label == "bf16's",
                             "plan": asdict(p_), **report})
                r, plan_ = rows[-1], p_
                table.append([r["dtype"], str(batch), label,
                              f"{plan_.block_m}x{plan_.block_k}x{plan_.block_n}"
                              + (f" /{plan_.k_split}" if plan_.k_split > 1 else ""),
                              f"{plan_.num_warps}/{plan_.num_stages}", str(r["registers"]),
                              str(r["spill_stores"]), f"{r['shared_bytes'] // 1024}",
                              str(r["tensor_core_products"]), str(r["fma"]),
                              str(r["async_copies"])])
    record = {"environment": environment(torch.device("cpu")) | {"triton": triton.__version__},
              "capability": args.capability, "processors": args.processors, "dim": args.dim,
              "rank": args.rank, "rows": rows}
    write_json(Path(args.out), record)
    print("\n".join(_table(("dtype", "batch", "", "M x K x N", "warps/stages", "regs",
                            "spills", "smem KiB", "MMA", "FFMA", "cp.async"), "lrllrrrrrrr",
                           table, console=True)))
    print("regs: registers per thread; spills: spill stores; MMA, FFMA, cp.async: tensor-core "
          "products, FMAs and asynchronous copies in the SASS (instructions, not executions).")
    print(f"wrote {args.out}")
    spilled = [r for r in rows if r["first_guess"] and r["spill_stores"]]
    for r in spilled:
        print(f"warning: the first guess spills at batch {r['batch']} ({r['dtype']})",
              file=sys.stderr)
    return 1 if spilled else 0


if __name__ == "__main__":
    sys.exit(main())
