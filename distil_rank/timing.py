"""Latency of a module's forward pass.

Warm-up calls are excluded; on CUDA each call is timed with CUDA events (the GPU's own clock, so
launch overhead and kernel time are both counted and nothing is lost to asynchrony); on the CPU
with perf_counter around the call, with the thread count recorded. The median of many calls is
the figure; the quartiles say how noisy it was.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn


@torch.inference_mode()
def measure_latency(module: nn.Module, batch: int, in_features: int, device: torch.device, *,
                    warmup: int, repeats: int, dtype: torch.dtype = torch.float32,
                    seed: int = 0) -> dict:
    """Milliseconds per forward pass of `module` on a [batch, in_features] input."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, in_features, generator=g).to(device=device, dtype=dtype)
    module = module.to(device=device, dtype=dtype).eval()
    for _ in range(warmup):
        module(x)
    times_ms = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            module(x)
            end.record()
            end.synchronize()
            times_ms.append(start.elapsed_time(end))
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            module(x)
            times_ms.append((time.perf_counter() - t0) * 1e3)
    quartiles = statistics.quantiles(times_ms, n=4) if len(times_ms) > 1 else times_ms * 3
    return {
        "median_ms": statistics.median(times_ms),
        "p25_ms": quartiles[0],
        "p75_ms": quartiles[2],
        "repeats": repeats,
        "batch": batch,
        "dtype": str(dtype).replace("torch.", ""),
        "device": device_name(device),
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
