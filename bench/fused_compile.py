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

import os
import re
import subprocess
import sys
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path

import torch

from distil_rank.benchmark.latency import environment
from distil_rank.benchmark.report import _table
from distil_rank.errors import InputError, OneLineParser, at_least
from distil_rank.files import check_writable_file, write_json
from distil_rank.kernels import fused
from distil_rank.kernels.fused import candidates, plan

ROOT = Path(__file__).resolve().parents[1]


def compile_report(p: fused.Plan, rows: int, dim_in: int, dim_out: int, rank: int,
                   dtype: torch.dtype, bias: bool = True, capability: int = 90) -> dict:
    """Compile the kernel for one plan ahead of time for an NVIDIA GPU of compute `capability`
    (90: Hopper), with no GPU: Triton's wheel carries ptxas and cuobjdump. The launch is
    specialised as Triton's launcher would specialise one on contiguous, 16-byte-aligned tensors
    of this shape (integers equal to 1 become constants, multiples of 16 are marked so). Returns
    what the compiler made of it: registers per thread, stack frame and spill stores, shared
    memory, and the instructions that matter here (tensor-core products, FMAs, asynchronous
    copies from global to shared memory, and a split-K plan's atomics and GPU-scope fences)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = fused._kernel()
    integers = dict(rows=rows, dim_in=dim_in, dim_out=dim_out, rank=rank, sxm=dim_in, sxk=1,
                    sdr=dim_in, sdk=1, sun=rank, sur=1, sym=dim_out, syn=1, n_span=p.n_span,
                    k_chunk=p.k_chunk)
    constants = dict(HAS_BIAS=bias, UPCAST=False,
                     PRECISION="ieee" if dtype == torch.float32 else "tf32",
                     BLOCK_M=p.block_m, BLOCK_K=p.block_k, BLOCK_N=p.block_n, BLOCK_R=p.block_r,
                     SPLIT_K=p.k_split)
    pointers = {"ws_ptr": "fp32", "count_ptr": "i32"}  # the split-K workspace and counters
    signature, attrs = {}, {}
    for i, name in enumerate(kernel.arg_names):
        value = integers.get(name)
        if name.endswith("_ptr"):
            element = pointers.get(name, fused._TRITON_TYPES[dtype]) if p.k_split > 1 else \
                fused._TRITON_TYPES[dtype]
            signature[name], attrs[(i,)] = f"*{element}", [["tt.divisibility", 16]]
        elif name in constants or value == 1:
            signature[name] = "constexpr"
            constants.setdefault(name, value)
        else:
            signature[name] = "i32"
            if value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    with warnings.catch_warnings():  # Triton 3.9 announces a change of its FP-fusion default
        warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")
        compiled = triton.compile(ASTSource(kernel, signature, constants, attrs),
                                  target=GPUTarget("cuda", capability, 32),
                                  options={"num_warps": p.num_warps, "num_stages": p.num_stages})
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as folder:
        cubin = Path(folder) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])

        def dump(flag: str) -> str:
            return subprocess.run([str(cuobjdump), flag, str(cubin)], capture_output=True,
                                  text=True, check=True).stdout

        usage, sass = dump("-res-usage"), dump("-sass")
    count = {op: len(re.findall(rf"\b{op}\b", sass))
             for op in ("HGMMA", "HMMA", "FFMA", "LDGSTS", "UTMALDG", "STL", "ATOMG")}
    count["gpu_fences"] = len(re.findall(r"\bMEMBAR\.\w+\.GPU\b", sass))
    return {"registers": int(re.search(r"REG:(\d+)", usage)[1]),
            "stack_bytes": int(re.search(r"STACK:(\d+)", usage)[1]),
            "spill_stores": count["STL"], "shared_bytes": compiled.metadata.shared,
            "tensor_core_products": count["HGMMA"] + count["HMMA"], "fma": count["FFMA"],
            "async_copies": count["LDGSTS"] + count["UTMALDG"],
            "atomics": count["ATOMG"], "gpu_fences": count["gpu_fences"]}


def main() -> int:
    p = OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=at_least(1), default=1280)
    p.add_argument("--rank", type=at_least(1), default=64)
    p.add_argument("--batches", default="1,32,256,4096,65536")
    p.add_argument("--capability", type=at_least(1), default=90,
                   help="compute capability (90: H100/H200)")
    p.add_argument("--processors", type=at_least(1), default=132,
                   help="multiprocessors (H100/H200: 132)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "fused_compile_sm90.json"))
    args = p.parse_args()
    try:  # now, not after the work
        check_writable_file(args.out, "--out", (".json",))
    except InputError as err:
        p.refuse(err)
    if args.rank > args.dim:
        p.error(f"--rank {args.rank}: above --dim {args.dim}")
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
