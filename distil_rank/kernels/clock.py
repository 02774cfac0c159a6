"""The clock: milliseconds per call, on CUDA from the GPU's own events, on the CPU from
perf_counter. The fused kernel's tuning and the benchmark's latency matrix both read it; it
imports nothing of the project."""

from __future__ import annotations

import time

import torch


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
