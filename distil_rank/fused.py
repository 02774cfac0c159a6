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

Inference only: autograd never sees the kernel. LowRankLinear uses it (its `fused` attribute)
when it is "on", or when it is "auto" (the default), on CUDA with Triton, no gradient wanted,
and the kernel measured faster than the two-product path for the shape (timed once per shape,
cached, like cuDNN's benchmark mode; never during CUDA-graph capture).

Tests run the kernel on the CPU under Triton's interpreter (TRITON_INTERPRET=1), which computes
tl.dot on bfloat16 wrongly; there the operands are upcast to fp32 first (UPCAST), and the
result is still rounded where the real kernel rounds it. `blocked_reference` replays the
kernel's tiling in plain PyTorch, so that the blocking logic is tested where Triton is absent.
"""

from __future__ import annotations

import functools
import math
import os
import statistics
from dataclasses import dataclass

import torch
import torch.nn.functional as F

MAX_RANK = 256  # above it, the padded h would not fit in a program's registers
MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class Plan:
    """Block sizes and grid of one launch."""

    block_m: int
    block_k: int
    block_n: int
    block_r: int
    n_span: int  # output columns per program (a multiple of block_n)
    grid: tuple[int, int]  # (row blocks, output spans)
    num_warps: int


def plan(rows: int, dim_in: int, dim_out: int, rank: int, processors: int = 132) -> Plan | None:
    """Blocks for a [rows, dim_in] input at `rank`; None when the rank is too large to fuse."""
    if rank > MAX_RANK:
        return None
    block_r = max(16, 1 << (rank - 1).bit_length())
    block_m = 16 if rows <= 16 else 32 if rows <= 1024 or block_r >= 128 else 64
    block_n = 64 if block_r >= 128 else 128
    block_k = 64
    row_blocks = math.ceil(rows / block_m)
    n_blocks = math.ceil(dim_out / block_n)
    spans = min(n_blocks, max(1, processors // row_blocks))  # fill the chip at small batches
    n_span = math.ceil(n_blocks / spans) * block_n
    return Plan(block_m, block_k, block_n, block_r, n_span,
                (row_blocks, math.ceil(dim_out / n_span)), 4 if block_m <= 32 else 8)


def blocked_reference(x: torch.Tensor, down: torch.Tensor, up: torch.Tensor,
                      bias: torch.Tensor | None, p: Plan) -> torch.Tensor:
    """The kernel's loops in plain PyTorch, tile by tile with its padding, for a 2-D x."""
    rows, dim_in = x.shape
    dim_out, rank = up.shape
    out = torch.empty(rows, dim_out, dtype=x.dtype)
    padded_down = F.pad(down, (0, 0, 0, p.block_r - rank)).float()  # [block_r, dim_in]
    padded_up = F.pad(up, (0, p.block_r - rank)).float()  # [dim_out, block_r]
    for pm in range(p.grid[0]):
        m = slice(pm * p.block_m, min(rows, (pm + 1) * p.block_m))
        for pn in range(p.grid[1]):
            h = torch.zeros(m.stop - m.start, p.block_r)
            for k0 in range(0, dim_in, p.block_k):
                k = slice(k0, min(dim_in, k0 + p.block_k))
                h += x[m, k].float() @ padded_down[:, k].T
            h = h.to(x.dtype).float()  # rounded as the two-product path rounds it
            for n0 in range(pn * p.n_span, min(dim_out, (pn + 1) * p.n_span), p.block_n):
                n = slice(n0, min(dim_out, n0 + p.block_n))
                y = h @ padded_up[n].T + (0 if bias is None else bias[n].float())
                out[m, n] = y.to(x.dtype)
    return out


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def lowrank_kernel(x_ptr, down_ptr, up_ptr, bias_ptr, y_ptr, rows, dim_in, dim_out, rank,
                       sxm, sxk, sdr, sdk, sun, sur, sym, syn, n_span,
                       HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_R: tl.constexpr):
        pm, pn = tl.program_id(0), tl.program_id(1)
        rm = pm * BLOCK_M + tl.arange(0, BLOCK_M)
        rr = tl.arange(0, BLOCK_R)
        h = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
        for k0 in range(0, dim_in, BLOCK_K):  # h = x A^T, over the input in slices
            rk = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(x_ptr + rm[:, None] * sxm + rk[None, :] * sxk,
                        mask=(rm[:, None] < rows) & (rk[None, :] < dim_in), other=0.0)
            a = tl.load(down_ptr + rr[None, :] * sdr + rk[:, None] * sdk,
                        mask=(rr[None, :] < rank) & (rk[:, None] < dim_in), other=0.0)
            if UPCAST:
                x = x.to(tl.float32)
                a = a.to(tl.float32)
            h += tl.dot(x, a, input_precision=PRECISION)
        h_in = h.to(y_ptr.dtype.element_ty)  # rounded as the two-product path rounds it
        if UPCAST:
            h_in = h_in.to(tl.float32)
        for n0 in range(0, n_span, BLOCK_N):  # this program's span of the output
            rn = pn * n_span + n0 + tl.arange(0, BLOCK_N)
            b = tl.load(up_ptr + rn[None, :] * sun + rr[:, None] * sur,
                        mask=(rn[None, :] < dim_out) & (rr[:, None] < rank), other=0.0)
            if UPCAST:
                b = b.to(tl.float32)
            y = tl.dot(h_in, b, input_precision=PRECISION)
            if HAS_BIAS:
                y += tl.load(bias_ptr + rn, mask=rn < dim_out, other=0.0).to(tl.float32)[None, :]
            tl.store(y_ptr + rm[:, None] * sym + rn[None, :] * syn, y.to(y_ptr.dtype.element_ty),
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
                  bias: torch.Tensor | None) -> torch.Tensor:
    """(x down^T) up^T + bias in one launch; any leading batch shape. Raises ValueError when
    the rank is above MAX_RANK (the caller keeps the two-product path)."""
    leading, dim_in = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, dim_in)
    dim_out, rank = up.shape
    p = plan(x2.shape[0], dim_in, dim_out, rank, _processors(x.device))
    if p is None:
        raise ValueError(f"rank {rank} is above the fused kernel's {MAX_RANK}")
    y = torch.empty(x2.shape[0], dim_out, dtype=x.dtype, device=x.device)
    if x2.shape[0] == 0:
        return y.reshape(*leading, dim_out)
    precision = "ieee" if x.dtype == torch.float32 else "tf32"  # fp32 as exact as cuBLAS's
    _kernel()[p.grid](
        x2, down, up, bias if bias is not None else y, y, x2.shape[0], dim_in, dim_out, rank,
        x2.stride(0), x2.stride(1), down.stride(0), down.stride(1), up.stride(0), up.stride(1),
        y.stride(0), y.stride(1), p.n_span, HAS_BIAS=bias is not None, UPCAST=_interpreting(),
        PRECISION=precision, BLOCK_M=p.block_m, BLOCK_K=p.block_k, BLOCK_N=p.block_n,
        BLOCK_R=p.block_r, num_warps=p.num_warps)
    return y.reshape(*leading, dim_out)


def _processors(device: torch.device) -> int:
    if device.type != "cuda":
        return 132
    return torch.cuda.get_device_properties(device).multi_processor_count


def _two_products(x, down, up, bias):
    return F.linear(F.linear(x, down), up, bias)


_FASTER: dict[tuple, bool] = {}  # (rows, dim_in, dim_out, rank, dtype, device) -> fused wins


def use_fused(mode: str, x: torch.Tensor, down: torch.Tensor, up: torch.Tensor,
              bias: torch.Tensor | None) -> bool:
    """Whether LowRankLinear's forward should take the kernel (see the module docstring)."""
    if mode not in MODES:
        raise ValueError(f"LowRankLinear.fused = {mode!r}: expected one of {', '.join(MODES)}")
    if mode == "off" or up.shape[1] > MAX_RANK:
        return False
    wants_grad = torch.is_grad_enabled() and (
        x.requires_grad or down.requires_grad or up.requires_grad
        or (bias is not None and bias.requires_grad))
    if wants_grad or not triton_available() or (x.device.type != "cuda" and not _interpreting()):
        return False
    if mode == "on":
        return True
    key = (x.numel() // x.shape[-1], x.shape[-1], up.shape[0], up.shape[1], x.dtype, x.device)
    if key not in _FASTER:
        if x.device.type != "cuda" or torch.cuda.is_current_stream_capturing():
            return False  # no clock to ask: keep the two-product path
        _FASTER[key] = _median_ms(fused_lowrank, x, down, up, bias) < _median_ms(
            _two_products, x, down, up, bias)
    return _FASTER[key]


def _median_ms(fn, *args, repeats: int = 20) -> float:
    from distil_rank.timing import time_calls

    for _ in range(3):  # warm-up: compilation and caches
        fn(*args)
    return statistics.median(time_calls(lambda: fn(*args), args[0].device, repeats))
