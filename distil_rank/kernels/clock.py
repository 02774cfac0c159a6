"""The clock: milliseconds per call, on CUDA from the GPU's own events, on the CPU from
perf_counter. The fused kernel's tuning and the benchmark's latency matrix both read it; it
imports nothing of the project."""

from __future__ import annotations

import statistics
import time

import torch

NOISY_RELATIVE_IQR = 0.25  # a timing whose interquartile range exceeds 25% of its median
SCHEDULER_TICKS_MS = (1.0, 4.0, 10.0)  # the kernel's timer tick at HZ = 1000, 250 and 100


def summarise(times_ms: list[float]) -> dict:
    """Median, quartiles and count of repeated timings, flagged `noisy` (interquartile range
    above NOISY_RELATIVE_IQR of the median) and `quantised` (snapped to a scheduler tick)."""
    quartiles = statistics.quantiles(times_ms, n=4) if len(times_ms) > 1 else times_ms * 3
    median = statistics.median(times_ms)
    return {"median_ms": median, "p25_ms": quartiles[0], "p75_ms": quartiles[2],
            "repeats": len(times_ms), "noisy": quartiles[2] - quartiles[0] > NOISY_RELATIVE_IQR
            * median, "quantised": quantised(times_ms)}


def quantised(times_ms: list[float]) -> bool:
    """Whether the times snap to a scheduler tick: at least 80% of them within a tenth of a tick
    of a whole number of ticks, at a median of two ticks or more. A process that waits for a
    core on a busy machine is timed in the scheduler's slices, with a tight spread that the
    interquartile test does not catch; times that fall at random are near a whole number of
    ticks one time in five."""
    median = statistics.median(times_ms)
    for tick in SCHEDULER_TICKS_MS:
        if median >= 2 * tick:
            near = sum(abs(t / tick - round(t / tick)) <= 0.1 for t in times_ms)
            if near >= 0.8 * len(times_ms):
                return True
    return False


def in_turns(fns: list, device: torch.device, repeats: int, warmup: int = 1) -> list[dict]:
    """summarise() of each fn()'s milliseconds, the fns called in turns, A, B, A, B ..., after
    `warmup` untimed rounds, so that all of them meet the same load."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, kept in zip(fns, times):
            kept.extend(time_calls(fn, device, 1))
    return [summarise(kept) for kept in times]


def time_calls(fn, device: torch.device, repeats: int) -> list[float]:
    """Milliseconds of each of `repeats` calls of fn() (warm-up is the caller's)."""
    times_ms = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times_ms.append(start.elapsed_time(end))
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times_ms.append((time.perf_counter() - t0) * 1e3)
    return times_ms


def graph_replay(fn, calls: int):
    """Capture `calls` calls of fn() in one CUDA graph; return a function that replays it. The
    warm-up and the capture share one side stream, so that what the warm-up set up per stream
    (the fused kernel's split-K counters) is what the graph uses."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up on a side stream, as graph capture requires
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        for _ in range(calls):
            fn()
    return graph.replay
