"""A fused forward for LowRankLinear on CUDA: y = (x A^T) B^T + b in one Triton kernel, with the
rank-r intermediate kept on chip.

Why: the two-product path launches two kernels and writes the [rows, r] intermediate to memory
and reads it back. At small batches a GPU is bound by launches, at large ones by memory (in
bf16 at 65536 rows of 1280, reading x and writing y alone is about 336 MB); the intermediate
and the second launch are pure overhead on top of what dense must also do.

How: a program takes BLOCK_M rows and a span of the output. It accumulates h = x A^T over the
input in BLOCK_K slices (fp32 accumulation), rounds h to the input's dtype (as the two-product
path rounds its intermediate), then, for each BLOCK_N slice of its span, computes h B^T + b
and stores it. The rank is padded to a power of two (at least 16, tl.dot's smallest) by
masked loads, and rows, width and output width may be ragged. When the rows give fewer
programs than the GPU has multiprocessors, the output is split into spans, each program
recomputing its rows' h (cheap: BLOCK_M x D_in x r), so that a batch of one still uses the
whole chip. Ranks above MAX_RANK keep the two-product path (h would not fit in registers).
With one row block, the opt-in split-K plans also split the input among programs
(`split_k_enabled`).

Which blocks are fastest depends on the chip, the dtype and the batch, so `plan` is a first
guess and `candidates` adds a few neighbours of it (row block, input slice, output tile,
pipelining depth, warps). On CUDA the first call in a power-of-two bucket of rows times each,
and the two products, by their GPU time in a CUDA graph (so that Python's launch cost does not
decide), and caches the result (`tuning`), as Triton's autotuner and cuDNN's benchmark mode do;
later calls in the bucket refit the chosen blocks to their rows. Nothing is timed during
CUDA-graph capture: a bucket not seen before takes the first guess.

Inference only, and opt-in (LowRankLinear.fused "auto" or "on"; the default "off" keeps the two
products until a GPU record shows the kernel right and faster). docs/kernel.md says more.

Under Triton's interpreter (TRITON_INTERPRET=1, the tests), which computes tl.dot on bfloat16
wrongly and truncates fp32 to bfloat16, the operands are upcast to fp32 first (UPCAST) and
bfloat16 is rounded by hand, to nearest even, as a GPU rounds.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import statistics
import warnings
from dataclasses import dataclass

import torch

from distil_rank.kernels import two_products
from distil_rank.kernels.clock import graph_replay, time_calls

MAX_RANK = 256  # above it, the padded h would not fit in a program's registers
FUSED_CHOICES = ("auto", "on", "off")  # LowRankLinear.fused


@dataclass(frozen=True)
class Plan:
    """Block sizes, grid and launch options of one launch."""

    block_m: int
    block_k: int
    block_n: int
    block_r: int
    n_span: int  # output columns per program (a multiple of block_n)
    grid: tuple[int, int]  # (row blocks, or input chunks when split, output spans)
    num_warps: int
    num_stages: int = 3  # input slices in flight (software pipelining)
    k_split: int = 1  # input chunks summed by separate programs (one row block only)
    k_chunk: int = 0  # input columns a program sums (a multiple of block_k unless whole)


SHARED_BYTES = 200 * 1024  # staged input and A slices, below a Hopper or Ampere SM's ~227 KiB


def plan(rows: int, dim_in: int, dim_out: int, rank: int, processors: int = 132,
         element_bytes: int = 4, *, block_m: int | None = None, block_k: int | None = None,
         block_n: int | None = None, num_stages: int = 3, num_warps: int | None = None,
         k_split: int = 1) -> Plan | None:
    """Blocks for a [rows, dim_in] input at `rank` with elements of `element_bytes` (each size
    chosen from the rows, the rank and the dtype unless given); None when the rank is too large
    to fuse. `k_split` > 1 cuts the input into about that many chunks of whole slices, each
    summed by its own program (`split_k_enabled`); None when the rows need more than one row
    block.

    bf16 and fp16 products run on tensor cores and take long input slices and wide output
    tiles. fp32 products are exact IEEE ones on the FMA units, whose operands sit in registers:
    compiled for sm_90 (bench/fused_compile.py), 64-wide slices and 128-wide tiles needed all
    255 registers and spilled, 16-wide slices and 64-wide tiles about 120 and none. Wide ranks
    (h at least 4096 values a program) take 8 warps, and fp32 at ranks above 128 16-row
    blocks: with 4 warps, or 32 rows, fp32 at rank 256 spilled there too."""
    if rank > MAX_RANK:
        return None
    block_r = max(16, 1 << (rank - 1).bit_length())
    fma = element_bytes >= 4
    if block_m is None:  # h, [block_m, block_r] in fp32, lives in registers
        block_m = 16 if rows <= 16 or (fma and block_r >= 256) else \
            32 if rows <= 1024 or block_r >= 128 else 64
    if fma:
        block_n = block_n or (64 if block_r <= 64 else 32)
        block_k = block_k or 16
    else:
        block_n = block_n or (64 if block_r >= 128 else 128)
        block_k = block_k or (32 if block_r >= 128 else 64)  # A's slice is [block_k, block_r]
    row_blocks = math.ceil(rows / block_m)
    n_blocks = math.ceil(dim_out / block_n)
    spans = min(n_blocks, max(1, processors // row_blocks))  # fill the chip at small batches
    n_span = math.ceil(n_blocks / spans) * block_n
    k_chunk = dim_in
    if k_split > 1:
        if row_blocks > 1:
            return None
        k_chunk = math.ceil(math.ceil(dim_in / k_split) / block_k) * block_k
        k_split = math.ceil(dim_in / k_chunk)
    return Plan(block_m, block_k, block_n, block_r, n_span,
                (k_split if k_split > 1 else row_blocks, math.ceil(dim_out / n_span)),
                num_warps or (8 if block_m >= 64 or block_m * block_r >= 4096 else 4),
                num_stages, k_split, k_chunk)


def fits(p: Plan, element_bytes: int) -> bool:
    """Whether a plan's staged input and A slices fit in shared memory. (Registers are the
    compiler's affair: a plan that spills is slow, and the tuning's clock drops it.)"""
    return p.num_stages * (p.block_m + p.block_r) * p.block_k * element_bytes <= SHARED_BYTES


def candidates(rows: int, dim_in: int, dim_out: int, rank: int, processors: int = 132,
               element_bytes: int = 4) -> list[Plan]:
    """The plans timed for a shape on first use, `plan`'s guess first: the row block one size
    down and (when there are more rows than it holds) one size up, a twice longer input slice,
    a half as wide output tile, one more slice in flight, and the other warp count (4 or 8:
    fewer registers a program, or more programs a multiprocessor); where the output is split
    into spans (small batches, each program reading all of A), also a deep pipeline: up to 6
    slices in flight (twice longer ones in bf16 and fp16), for a read that latency bounds;
    with one row block and split-K enabled, the first guess split over the input so that each
    span's programs fill the chip; only those that fit (`fits`), each once."""
    first = plan(rows, dim_in, dim_out, rank, processors, element_bytes)
    if first is None:
        return []
    shape = (rows, dim_in, dim_out, rank, processors, element_bytes)
    same = dict(block_m=first.block_m, block_k=first.block_k, block_n=first.block_n)
    variants = [plan(*shape, block_m=max(16, first.block_m // 2)),
                plan(*shape, block_m=first.block_m * 2) if rows > first.block_m else None,
                plan(*shape, **same | {"block_k": 2 * first.block_k}),
                plan(*shape, **same | {"block_n": max(16, first.block_n // 2)}),
                plan(*shape, **same, num_stages=first.num_stages + 1),
                plan(*shape, **same, num_warps=12 - first.num_warps)]
    if first.grid[1] > 1:  # fp32's longer slices cost registers (bench/fused_compile.py)
        deep = same if element_bytes >= 4 else same | {"block_k": 2 * first.block_k}
        variants += [next((p for stages in range(6, first.num_stages, -1)
                           if fits(p := plan(*shape, **deep, num_stages=stages),
                                   element_bytes)), None)]
    if split_k_enabled() and first.grid[0] == 1 and first.grid[1] < processors // 2:
        variants += [plan(*shape, **same, k_split=processors // first.grid[1])]
    chosen = [first]
    for p in variants:
        if p is not None and p not in chosen and fits(p, element_bytes):
            chosen.append(p)
    return chosen


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def _parts() -> None:
    """The kernel's two pieces that read best on their own, as Triton functions it inlines.
    They become this module's globals, where the compiler and the interpreter (which runs a
    kernel's source again, seeing globals only) both find them; made on first use, so that
    TRITON_INTERPRET is read when the kernel is, not at import."""
    global round_to_bf16, down_product
    import triton
    import triton.language as tl

    @triton.jit
    def round_to_bf16(v):
        """float32 rounded to bfloat16's precision, to nearest, ties to even, kept in float32."""
        bits = v.to(tl.uint32, bitcast=True)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True)

    @triton.jit
    def down_product(x_ptr, down_ptr, rm, rr, k_start, k_stop, rows, rank, sxm, sxk, sdr, sdk,
                     UPCAST: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr):
        """h = x A^T for the rows rm over the input columns k_start..k_stop, in slices."""
        h = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
        for k0 in range(k_start, k_stop, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(x_ptr + rm[:, None] * sxm + rk[None, :] * sxk,  # read once: stream it
                        mask=(rm[:, None] < rows) & (rk[None, :] < k_stop), other=0.0,
                        eviction_policy="evict_first")
            a = tl.load(down_ptr + rr[None, :] * sdr + rk[:, None] * sdk,  # every program's
                        mask=(rr[None, :] < rank) & (rk[:, None] < k_stop), other=0.0,
                        eviction_policy="evict_last")
            if UPCAST:
                x = x.to(tl.float32)
                a = a.to(tl.float32)
            h += tl.dot(x, a, input_precision=PRECISION)
        return h


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    _parts()

    @triton.jit
    def lowrank_kernel(x_ptr, down_ptr, up_ptr, bias_ptr, y_ptr, ws_ptr, count_ptr, rows, dim_in,
                       dim_out, rank, sxm, sxk, sdr, sdk, sun, sur, sym, syn, n_span, k_chunk,
                       HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_R: tl.constexpr, SPLIT_K: tl.constexpr):
        pm, pn = tl.program_id(0), tl.program_id(1)
        if SPLIT_K > 1:  # one row block; program pm sums its chunk of the input
            rm, k_start = tl.arange(0, BLOCK_M), pm * k_chunk
        else:
            rm, k_start = pm * BLOCK_M + tl.arange(0, BLOCK_M), 0
        rr = tl.arange(0, BLOCK_R)
        h = down_product(x_ptr, down_ptr, rm, rr, k_start, tl.minimum(dim_in, k_start + k_chunk),
                         rows, rank, sxm, sxk, sdr, sdk, UPCAST, PRECISION, BLOCK_M, BLOCK_K,
                         BLOCK_R)
        if SPLIT_K > 1:  # partial sums to memory; the span's last program to arrive adds them
            tile = rm[:, None] * BLOCK_R + rr[None, :]
            span = ws_ptr + pn * SPLIT_K * BLOCK_M * BLOCK_R
            tl.store(span + pm * BLOCK_M * BLOCK_R + tile, h)
            tl.debug_barrier()  # every thread's part stored before the release below
            last = tl.atomic_add(count_ptr + pn, 1, sem="acq_rel", scope="gpu") == SPLIT_K - 1
        else:
            last = True
        if last:
            if SPLIT_K > 1:
                h = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
                for part in range(SPLIT_K):  # in order: the same sum on every run
                    h += tl.load(span + part * BLOCK_M * BLOCK_R + tile, volatile=True)
                tl.atomic_xchg(count_ptr + pn, 0)  # ready for the next launch
            if UPCAST and y_ptr.dtype.element_ty == tl.bfloat16:
                h = round_to_bf16(h)
            h_in = h.to(y_ptr.dtype.element_ty)  # rounded as the two-product path rounds it
            if UPCAST:
                h_in = h_in.to(tl.float32)
            for n0 in range(0, n_span, BLOCK_N):  # this program's span of the output
                rn = pn * n_span + n0 + tl.arange(0, BLOCK_N)
                b = tl.load(up_ptr + rn[None, :] * sun + rr[:, None] * sur,
                            mask=(rn[None, :] < dim_out) & (rr[:, None] < rank), other=0.0,
                            eviction_policy="evict_last")
                if UPCAST:
                    b = b.to(tl.float32)
                y = tl.dot(h_in, b, input_precision=PRECISION)
                if HAS_BIAS:
                    y += tl.load(bias_ptr + rn, mask=rn < dim_out,
                                 other=0.0).to(tl.float32)[None, :]
                if UPCAST and y_ptr.dtype.element_ty == tl.bfloat16:  # as h above
                    y = round_to_bf16(y)
                tl.store(y_ptr + rm[:, None] * sym + rn[None, :] * syn,
                         y.to(y_ptr.dtype.element_ty),
                         mask=(rm[:, None] < rows) & (rn[None, :] < dim_out))

    return lowrank_kernel


def triton_available() -> bool:
    """Triton imports, and there is something to run it on (CUDA, or its interpreter)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available() or _interpreting()


def fused_lowrank(x: torch.Tensor, down: torch.Tensor, up: torch.Tensor,
                  bias: torch.Tensor | None, p: Plan | None = None) -> torch.Tensor:
    """(x down^T) up^T + bias in one launch; any leading batch shape. Blocks from `p`, else the
    shape's tuned plan (`tuning`), else `plan`'s guess. Raises ValueError when the rank is above
    MAX_RANK (the caller keeps the two-product path), and RuntimeError when the tuning found no
    plan that both runs on this GPU and gives the right answer ("auto" never gets here)."""
    leading, dim_in = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, dim_in)
    dim_out, rank = up.shape
    if rank > MAX_RANK:
        raise ValueError(f"rank {rank} is above the fused kernel's {MAX_RANK}")
    y = torch.empty(x2.shape[0], dim_out, dtype=x.dtype, device=x.device)
    if x2.shape[0] == 0:
        return y.reshape(*leading, dim_out)
    shape = launch_shape(x2, up)
    if p is None:
        tuned = tuning(x, down, up, bias)
        if tuned is not None and tuned.tried == 0:
            raise RuntimeError(f"the fused low-rank kernel has no plan that fits this GPU and "
                               f"agrees with the two products at {x2.shape[0]} x {dim_in} -> "
                               f"{dim_out}, rank {rank} ({tuned.rejected} disagreed): use "
                               f"fused = \"auto\" or \"off\"")
        p = refit(tuned.plan, *shape) if tuned else plan(*shape)
    precision = "ieee" if x.dtype == torch.float32 else "tf32"  # fp32 as exact as cuBLAS's
    with _on(x.device):
        workspace = counts = y  # not read unless split
        if p.k_split > 1:
            counts = _arrival_counts(x.device, p.grid[1])
            if counts is None:  # a new stream, capturing: no zeroed counters (_arrival_counts)
                p, counts = refit(p, *shape, split=False), y
            else:
                workspace = torch.empty(p.grid[1] * p.k_split * p.block_m * p.block_r,
                                        dtype=torch.float32, device=x.device)
        _kernel()[p.grid](
            x2, down, up, bias if bias is not None else y, y, workspace, counts, x2.shape[0],
            dim_in, dim_out, rank, x2.stride(0), x2.stride(1), down.stride(0), down.stride(1),
            up.stride(0), up.stride(1), y.stride(0), y.stride(1), p.n_span, p.k_chunk,
            HAS_BIAS=bias is not None, UPCAST=_interpreting(), PRECISION=precision,
            BLOCK_M=p.block_m, BLOCK_K=p.block_k, BLOCK_N=p.block_n, BLOCK_R=p.block_r,
            SPLIT_K=p.k_split, num_warps=p.num_warps, num_stages=p.num_stages)
    return y.reshape(*leading, dim_out)


def launch_shape(x2: torch.Tensor, up: torch.Tensor) -> tuple[int, int, int, int, int, int]:
    """`plan`'s shape arguments for a launch on the 2-D input x2 with up-projection `up`."""
    return (x2.shape[0], x2.shape[1], up.shape[0], up.shape[1], multiprocessors(x2.device),
            x2.element_size())


def split_k_enabled() -> bool:
    """Whether the tuning also tries split-K plans (DISTIL_RANK_SPLIT_K=1): opt-in until they
    have run on a GPU. A batch that fits one row block is then summed over the input by many
    programs, each reading a chunk of A, where otherwise one program reads all of it; each
    writes its partial h, and the last of a span's programs to arrive (an atomic counter,
    release and acquire at GPU scope) adds them in a fixed order and writes the span. That
    ordering is what a GPU must honour and an interpreter, running programs one after
    another, cannot test."""
    return os.environ.get("DISTIL_RANK_SPLIT_K", "0") == "1"


_COUNTS: dict[tuple, torch.Tensor] = {}  # (device, stream) -> zeroed arrival counters


def _arrival_counts(device: torch.device, spans: int) -> torch.Tensor | None:
    """Split-K arrival counters, one a span, zero between launches (each span's last program
    resets its own); one set per device and stream, so that launches running at once on two
    streams do not share them (graphs captured on one stream share its set: two of them must
    not be replayed at once). None when there is no set yet and the stream is capturing a CUDA
    graph: zeroing a new set there would only be recorded, not run, so the launch takes the
    unsplit plan (a graph captured after a warm-up call on the same stream, as
    kernels.clock.graph_replay does, finds the set made by that call)."""
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    counts = _COUNTS.get((device, stream))
    if counts is None or counts.numel() < spans:
        if _capturing(device):
            return None
        counts = _COUNTS[(device, stream)] = torch.zeros(max(spans, 1024), dtype=torch.int32,
                                                         device=device)
    return counts


def _capturing(device: torch.device) -> bool:
    """Whether the current stream of `device` is capturing a CUDA graph."""
    if device.type != "cuda":
        return False
    with _on(device):
        return torch.cuda.is_current_stream_capturing()


def _on(device: torch.device):
    """Triton launches on the current CUDA device, not on its tensors': make it theirs (a model
    on cuda:1 while cuda:0 is current)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


_TRITON_TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """The largest difference from `want` (fp32), relative to its largest magnitude."""
    scale = want.abs().max().clamp_min(torch.finfo(torch.float32).tiny)
    return ((got.float() - want).abs().max() / scale).item()


def within_rounding(kernel_error: float, two_products_error: float) -> bool:
    """The bar the kernel is held to, on a GPU (bench/latency.py) and under the interpreter
    (tests): its error against fp32 two products at most twice the two products' own in the
    same dtype, plus 1e-5 for fp32's different order of summation."""
    return kernel_error <= 2 * two_products_error + 1e-5


@functools.cache  # asked on every launch
def multiprocessors(device: torch.device) -> int:
    """The device's streaming multiprocessors (off CUDA, an H100's or H200's 132: the plans a
    CPU test replays are the ones such a GPU would run)."""
    if device.type != "cuda":
        return 132
    return torch.cuda.get_device_properties(device).multi_processor_count


two_products_path = two_products  # what the kernel replaces (distil_rank.lowrank)


@dataclass(frozen=True)
class Tuning:
    """What the first call in a row bucket measured: its fastest plan, and the two products."""

    plan: Plan
    fused_ms: float
    two_products_ms: float
    tried: int  # plans that compiled, ran and agreed (0: none did; fused_ms is then infinite)
    rejected: int = 0  # plans that ran but disagreed with the two products (see measure_plans)


_TUNED: dict[tuple, Tuning] = {}  # (row bucket, dim_in, dim_out, rank, bias, dtype, device)


def row_bucket(rows: int) -> int:
    """The power of two at or above `rows`: tuning is done once per bucket, so that inputs
    whose row count changes on every call (sequences of varying length) are not re-timed."""
    return 1 << max(0, rows - 1).bit_length()


def refit(p: Plan, rows: int, dim_in: int, dim_out: int, rank: int, processors: int = 132,
          element_bytes: int = 4, *, split: bool = True) -> Plan:
    """Plan `p`'s blocks, warps and stages, with the grid and spans for `rows` (split as `p`
    where those rows still fit one row block, unless `split` is False)."""
    same = dict(block_m=p.block_m, block_k=p.block_k, block_n=p.block_n,
                num_stages=p.num_stages, num_warps=p.num_warps)
    shape = (rows, dim_in, dim_out, rank, processors, element_bytes)
    return (split and p.k_split > 1 and plan(*shape, **same, k_split=p.k_split)) or \
        plan(*shape, **same)


def tuning(x: torch.Tensor, down: torch.Tensor, up: torch.Tensor,
           bias: torch.Tensor | None) -> Tuning | None:
    """The Tuning of x's row bucket (`row_bucket`) at this width, rank, dtype and device,
    measured on the bucket's first call on CUDA and cached; None where there is no clock to
    ask (not CUDA, or inside CUDA-graph capture before the bucket was seen)."""
    rows, (dim_out, rank) = x.numel() // x.shape[-1], up.shape
    key = (row_bucket(rows), x.shape[-1], dim_out, rank, bias is not None, x.dtype, x.device)
    if key not in _TUNED:
        if x.device.type != "cuda":
            return None
        if _capturing(x.device):
            return None
        with _on(x.device):  # its streams and graphs on x's device
            _TUNED[key] = measure_plans(x, down, up, bias, multiprocessors(x.device))
    return _TUNED[key]


def measure_plans(x: torch.Tensor, down: torch.Tensor, up: torch.Tensor,
                  bias: torch.Tensor | None, processors: int) -> Tuning:
    """Time every candidate plan, and the two products, at x's shape, dtype and device; the
    fastest plan wins. The input is a seeded standard normal probe, not x: times do not depend
    on the values, and the check below needs finite ones. A plan the chip cannot hold is skipped.
    So is, with a warning, one whose output is not within rounding (`within_rounding`) of the
    two products computed in fp32: a compiler or kernel fault on this chip must cost speed,
    never a wrong answer. Tuning must never be what runs a full GPU out of memory: a plan, or
    the two products, whose timing does is left untimed (infinite), and when even the probe
    does not fit, nothing is (so "auto" keeps the two products)."""
    from triton.runtime.errors import OutOfResources

    rows, (dim_out, rank) = x.numel() // x.shape[-1], up.shape
    plans = candidates(rows, x.shape[-1], dim_out, rank, processors, x.element_size())
    try:
        probe = torch.randn(rows, x.shape[-1], device=x.device, dtype=x.dtype,
                            generator=torch.Generator(x.device).manual_seed(0))
        want = two_products_path(*(None if t is None else t.float()
                                   for t in (probe, down, up, bias)))
        bar = relative_error(two_products_path(probe, down, up, bias), want)
    except torch.cuda.OutOfMemoryError:
        warnings.warn(f"fused low-rank kernel: no memory to tune it for {rows} rows; the two "
                      "products are kept there", RuntimeWarning, stacklevel=2)
        return Tuning(plans[0], math.inf, math.inf, 0)
    timed, rejected = [], 0
    for p in plans:
        # OutOfResources: more shared memory or registers than the chip has
        with contextlib.suppress(OutOfResources, torch.cuda.OutOfMemoryError):
            error = relative_error(fused_lowrank(probe, down, up, bias, p), want)
            if not within_rounding(error, bar):
                warnings.warn(f"fused low-rank kernel: plan {p} is off by {error:.2g} of the "
                              f"largest output where the two products are off by {bar:.2g}; "
                              "it is not used", RuntimeWarning, stacklevel=2)
                rejected += 1
                continue
            timed.append((_median_ms(fused_lowrank, probe, down, up, bias, p), p))
    fused_ms, best = min(timed, key=lambda pair: pair[0], default=(math.inf, plans[0]))
    two_products_ms = math.inf
    with contextlib.suppress(torch.cuda.OutOfMemoryError):
        two_products_ms = _median_ms(two_products_path, probe, down, up, bias)
    return Tuning(best, fused_ms, two_products_ms, len(timed), rejected)


def use_fused(mode: str, x: torch.Tensor, down: torch.Tensor, up: torch.Tensor,
              bias: torch.Tensor | None) -> bool:
    """Whether LowRankLinear's forward should take the kernel (see the module docstring)."""
    if mode not in FUSED_CHOICES:
        raise ValueError(f"LowRankLinear.fused = {mode!r}: expected one of "
                         f"{', '.join(FUSED_CHOICES)}")
    if mode == "off" or up.shape[1] > MAX_RANK or x.numel() == 0:
        return False
    if x.dtype not in _TRITON_TYPES or any(
            t is not None and (t.dtype, t.device) != (x.dtype, x.device) for t in (down, up, bias)):
        return False  # float64, or mixed dtypes or devices: the two products (which refuse those)
    if torch.compiler.is_compiling():  # torch.compile: its own kernels for the two products
        return False
    wants_grad = torch.is_grad_enabled() and (
        x.requires_grad or down.requires_grad or up.requires_grad
        or (bias is not None and bias.requires_grad))
    if wants_grad or not triton_available() or (x.device.type != "cuda" and not _interpreting()):
        return False
    if mode == "on":
        return True
    tuned = tuning(x, down, up, bias)
    return tuned is not None and tuned.fused_ms < tuned.two_products_ms


GRAPH_BYTES = 256 * 2**20  # at most this much output captured in one timing graph


def calls_per_graph(call_bytes: int, free_bytes: int | None = None) -> int:
    """Calls captured in one timing graph, each keeping `call_bytes` (its output and
    intermediate) alive in the graph's memory: 10, so that a replay's fixed cost (about 14 us on
    an H200) is shared, but fewer where they would pass GRAPH_BYTES (at batch 65536 in fp32 one
    output is 335 MB, and one call is long enough), and fewer again where the graph and the
    warm-up call before it would take more than half of `free_bytes` (the GPU's free memory; a
    capture cannot free PyTorch's cached blocks to make room, and running out of memory inside
    one can surface as a capture error and leave the allocator mid-capture: pytorch/pytorch
    #187795, #180395). 0: not even one fits, do not capture."""
    calls = max(1, min(10, GRAPH_BYTES // max(1, call_bytes)))
    if free_bytes is not None:
        calls = min(calls, free_bytes // 2 // max(1, call_bytes) - 1)
    return max(0, calls)


def _median_ms(fn, *args, repeats: int = 20) -> float:
    """Median milliseconds of fn(x, down, up, bias, ...). On CUDA its GPU time: calls replayed
    from one CUDA graph (`calls_per_graph`), so that the CPU's launch cost, which differs
    between Triton and cuBLAS and is paid once per graph where speed matters, does not decide;
    infinite (untimed) where the GPU has no room for the graph. Elsewhere the wall time of a
    call."""

    x, up = args[0], args[2]
    cuda = x.device.type == "cuda"
    calls = 1
    if cuda:
        call_bytes = x.numel() // x.shape[-1] * sum(up.shape) * x.element_size()
        calls = calls_per_graph(call_bytes, torch.cuda.mem_get_info(x.device)[0])
        if calls == 0:
            return math.inf
    call = graph_replay(lambda: fn(*args), calls) if cuda else functools.partial(fn, *args)
    for _ in range(3):  # warm-up: compilation and caches
        call()
    return statistics.median(time_calls(call, x.device, repeats)) / calls
