"""Latency of a module's forward pass, and the dense-versus-factorised latency matrix.

Warm-up calls are excluded. On CUDA each call is timed with CUDA events (the GPU's own clock:
launch overhead and kernel time both count, nothing is lost to asynchrony); on the CPU with
perf_counter around the call, with the thread count recorded. The median of many calls is the
figure, the quartiles say how noisy it was.

CUDA-graph replay (mode "cuda_graph") captures `graph_calls` forward passes (10) in one graph and
replays it, reporting the time per pass: this removes the per-kernel launch cost, and spreads the
graph's own launch over the passes, as a serving stack that captures a whole model would see.
(With one pass per graph, no replay took less than about 14 us in the H200 record of 0db7230:
its small batches measured that floor, not the layer.) Modes "fused" and "fused_graph" are the
same with LowRankLinear's one-kernel forward (distil_rank/kernels/fused.py); the dense layer is
timed the same way in every mode, and "eager" and "cuda_graph" keep the factorised layer's two
products. A factorised layer is two kernels instead of one, so at small batches on a GPU it
can be slower than the dense layer in eager mode; the matrix shows where that flips (the
break-even batch size).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import platform
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from distil_rank.kernels.clock import (  # noqa: F401 (the clock's flags, re-exported)
    NOISY_RELATIVE_IQR,
    SCHEDULER_TICKS_MS,
    graph_replay,
    quantised,
    summarise,
    time_calls,
)
from distil_rank.lowrank import LowRankLinear, flop_ratio, seeded_linear

TIMING_MODES = ("eager", "cuda_graph", "fused", "fused_graph")


def modes_for(device: torch.device, fused: bool = True) -> tuple[str, ...]:
    """What a latency matrix measures on `device`: eager on the CPU; on CUDA also graph replay,
    and, with `fused`, the fused kernel's two modes where Triton is installed."""
    if device.type != "cuda":
        return ("eager",)
    from distil_rank.kernels.fused import triton_available

    return TIMING_MODES if fused and triton_available() else TIMING_MODES[:2]


@dataclass(frozen=True)
class LatencySettings:
    batch: int = 32  # rows per forward pass of the teacher-against-student timing
    warmup: int = 20  # untimed calls before measuring
    repeats: int = 200  # timed calls; the median is reported
    batches: tuple[int, ...] = (1, 32, 256, 4096)  # the run's small dense-vs-factorised matrix
    budget_s: float = 0.5  # seconds per matrix cell at most (at least 5 calls)


def _input(batch: int, in_features: int, device: torch.device, dtype: torch.dtype,
           seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, in_features, generator=g).to(device=device, dtype=dtype)


def _timed_call(module: nn.Module, x: torch.Tensor, mode: str, graph_calls: int):
    """(one timed call, forward passes per call) of a copy of `module` prepared for `mode`."""
    module = copy.deepcopy(module).to(device=x.device, dtype=x.dtype).eval().requires_grad_(False)
    if isinstance(module, LowRankLinear):
        module.fused = "on" if mode.startswith("fused") else "off"
    if mode.endswith("graph"):
        return graph_replay(lambda: module(x), graph_calls), graph_calls
    return (lambda: module(x)), 1


@torch.inference_mode()
def measure_latencies(modules: list[nn.Module], batch: int, in_features: int,
                      device: torch.device, *, warmup: int, repeats: int,
                      dtype: torch.dtype = torch.float32, mode: str = "eager", seed: int = 0,
                      budget_s: float | None = None, graph_calls: int = 10) -> list[dict]:
    """Milliseconds per forward pass of copies of `modules` on one [batch, in_features] input
    (the caller's modules are never moved), timed interleaved, A, B, A, B ..., so that every
    module sees the same load. Graph modes replay `graph_calls` passes at a time.

    With `budget_s`, `repeats` is an upper bound: fewer rounds are made when one is so slow
    that `repeats` of them would take longer than the budget (at least 5 are always made).
    """
    if mode not in TIMING_MODES:
        raise ValueError(f"unknown timing mode {mode!r}")
    if mode != "eager" and device.type != "cuda":
        raise ValueError(f"mode {mode} needs a CUDA device")
    x = _input(batch, in_features, device, dtype, seed)
    calls = [_timed_call(module, x, mode, graph_calls) for module in modules]
    for _ in range(warmup):
        for fn, _ in calls:
            fn()
    if budget_s is not None:
        one_round_s = sum(statistics.median(time_calls(fn, device, 3)) for fn, _ in calls) / 1e3
        repeats = max(5, min(repeats, int(budget_s / max(one_round_s, 1e-9))))
    times = [[] for _ in calls]
    for _ in range(repeats):
        for (fn, passes), kept in zip(calls, times):
            kept.append(time_calls(fn, device, 1)[0] / passes)
    return [{**summarise(kept), "batch": batch,
             "dtype": str(dtype).replace("torch.", ""), "mode": mode,
             "device": device_name(device), "calls_per_replay": passes,
             "threads": torch.get_num_threads() if device.type == "cpu" else None}
            for kept, (_, passes) in zip(times, calls)]


def measure_latency(module: nn.Module, batch: int, in_features: int, device: torch.device,
                    **timing) -> dict:
    """`measure_latencies` of one module."""
    return measure_latencies([module], batch, in_features, device, **timing)[0]


PLAUSIBLE_OVER_FLOPS = 1.5  # a speedup above 1.5x the FLOP ratio is the clock's, not the layer's


def trust_flags(dense: dict, factorised: dict, speedup: float, flop_ratio: float) -> list[str]:
    """Why a dense-against-factorised cell cannot be trusted; empty when it can."""
    flags = [name for name, raised in (
        ("noisy", dense["noisy"] or factorised["noisy"]),
        ("quantised", dense.get("quantised") or factorised.get("quantised")),
        ("above the FLOP ratio", speedup > PLAUSIBLE_OVER_FLOPS * flop_ratio)) if raised]
    return flags


def copy_bandwidth_gb_s(device: torch.device, megabytes: int = 1024, repeats: int = 10) -> float:
    """The device's memory bandwidth as a large copy sees it (bytes read plus bytes written, per
    second): the ceiling for any layer that must read its input and write its output once."""
    src = torch.empty(megabytes * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    ms = statistics.median(time_calls(lambda: dst.copy_(src), device, repeats))
    return 2 * src.numel() / (ms / 1e3) / 1e9


@torch.inference_mode()
def fused_check(module: LowRankLinear, batch: int, device: torch.device, dtype: torch.dtype,
                seed: int = 0) -> dict:
    """What the fused kernel does at one shape on this device: the plan its tuning chose (of how
    many that ran and agreed, and how many disagreed and were dropped; off CUDA, under Triton's
    interpreter, no tuning: `plan`'s guess and 0), whether "auto" takes it, and its largest
    error, relative to the largest output, against the two products in fp32; beside it the two
    products' own error in `dtype`, the yardstick for rounding (`fused.within_rounding`)."""
    from distil_rank.kernels import fused

    x = _input(batch, module.in_features, device, dtype, seed)
    m = copy.deepcopy(module).to(device=device, dtype=dtype).eval().requires_grad_(False)
    f32 = [None if t is None else t.float() for t in (x, m.down, m.up, m.bias)]
    want = fused.two_products_path(*f32)
    tuned = fused.tuning(x, m.down, m.up, m.bias)  # None off CUDA: the first guess is used
    first = fused.plan(batch, m.in_features, m.out_features, m.rank,
                       fused.multiprocessors(device), x.element_size())
    return {"plan": dataclasses.asdict(tuned.plan if tuned else first),
            "plans_tried": tuned.tried if tuned else 0,
            "plans_rejected": tuned.rejected if tuned else 0,
            "fused_ms": tuned.fused_ms if tuned else None,
            "two_products_ms": tuned.two_products_ms if tuned else None,
            "auto_takes_kernel": fused.use_fused("auto", x, m.down, m.up, m.bias),
            "max_relative_error": (kernel := fused.relative_error(
                fused.fused_lowrank(x, m.down, m.up, m.bias), want)),
            "two_products_error": (reference := fused.relative_error(
                fused.two_products_path(x, m.down, m.up, m.bias), want)),
            "within_rounding": fused.within_rounding(kernel, reference)}


def _fits_in_memory(batch: int, dim_in: int, dim_out: int, rank: int, dtype: torch.dtype,
                    device: torch.device) -> bool:
    """Input, output and the rank-r intermediate, with room to spare: at most a quarter of the
    free memory on CUDA, and of the physical memory on the CPU."""
    need = batch * (dim_in + dim_out + rank) * torch.finfo(dtype).bits // 8
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return need * 4 < free
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        physical = 8 * 2**30
    return need * 4 < physical


def break_even_batch(rows: list[dict]) -> int | None:
    """The smallest batch from which the factorised layer is faster at every larger batch
    measured, over the cells that can be trusted; None when it is not faster even at the
    largest."""
    rows = sorted((r for r in rows if not r.get("untrusted")), key=lambda r: r["batch"])
    answer = None
    for row in reversed(rows):
        if row["speedup"] >= 1.0:
            answer = row["batch"]
        else:
            break
    return answer


def latency_matrix(dim_in: int, dim_out: int, rank: int, device: torch.device, *,
                   batches=(1, 32, 256, 4096, 65536), dtypes=(torch.float32,),
                   modes=("eager",), warmup: int = 10, repeats: int = 100,
                   budget_s: float = 1.0, seed: int = 0, graph_calls: int = 10) -> dict:
    """Dense nn.Linear against LowRankLinear of the same shape, for every batch, dtype and mode.
    Weights are random: the time of a matmul does not depend on the values. On CUDA each row
    also has the memory-bound time (reading x and writing y once at the copy bandwidth measured
    here), and the fused modes' rows what the kernel did (`fused_check`)."""
    g = torch.Generator().manual_seed(seed)
    dense = seeded_linear(dim_in, dim_out, g)
    factorised = LowRankLinear(dim_in, dim_out, rank, generator=g)
    bandwidth = copy_bandwidth_gb_s(device) if device.type == "cuda" else None
    rows, skipped = [], []
    for dtype in dtypes:
        for mode in modes:
            for batch in batches:
                if not _fits_in_memory(batch, dim_in, dim_out, rank, dtype, device):
                    skipped.append({"batch": batch, "dtype": str(dtype), "mode": mode,
                                    "why": "would not fit in memory"})
                    continue
                common = dict(warmup=warmup, repeats=repeats, dtype=dtype, mode=mode, seed=seed,
                              budget_s=budget_s, graph_calls=graph_calls)
                d, f = measure_latencies([dense, factorised], batch, dim_in, device, **common)
                speedup, ratio = d["median_ms"] / f["median_ms"], flop_ratio(dim_in, dim_out,
                                                                              rank)
                flags = trust_flags(d, f, speedup, ratio)
                row = {"batch": batch, "dtype": d["dtype"], "mode": mode, "dense": d,
                       "factorised": f, "speedup": speedup, "flop_ratio": ratio,
                       "noisy": d["noisy"] or f["noisy"], "untrusted": flags}
                if bandwidth:
                    moved = batch * (dim_in + dim_out) * torch.finfo(dtype).bits // 8
                    row["memory_bound_ms"] = moved / (bandwidth * 1e9) * 1e3
                if mode.startswith("fused"):
                    row["fused"] = fused_check(factorised, batch, device, dtype, seed)
                rows.append(row)
    groups = {}
    for row in rows:
        groups.setdefault(f"{row['dtype']}/{row['mode']}", []).append(row)
    return {
        "device": device_name(device),
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "dim_in": dim_in, "dim_out": dim_out, "rank": rank,
        "flop_ratio": flop_ratio(dim_in, dim_out, rank),
        "copy_bandwidth_gb_s": bandwidth,
        "graph_calls_per_replay": graph_calls if any(m.endswith("graph") for m in modes) else None,
        "rows": rows,
        "skipped": skipped,
        "break_even_batch": {key: break_even_batch(group) for key, group in groups.items()},
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def name_slug(text: str, limit: int = 48) -> str:
    """A device's name as part of a file name: "NVIDIA H200" -> "nvidia-h200"."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU: {cpu_name()}"


def environment(device: torch.device) -> dict:
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": device_name(device),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
    }
