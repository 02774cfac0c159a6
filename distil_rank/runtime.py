"""Seeds, devices, CPU threads and a model's mode: what every stage needs, owned by no stage."""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from distil_rank.errors import InputError


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """The model in eval mode inside (dropout off, as it will run); every module back in its
    own mode after."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.training = training


def stage_seed(seed: int, stage: str) -> int:
    """A seed per stage, so that changing one stage's draws does not shift another's."""
    return (seed * 1_000_003 + zlib.crc32(stage.encode())) % (2**31)


def resolve_device(name: str) -> torch.device:
    """--device as a torch.device that exists here, or one line saying why not."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name!r}: unknown device, expected auto, cpu, cuda or "
                         "cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise InputError(f"--device {name!r}: only cpu and cuda are supported")
    if not torch.cuda.is_available():
        raise InputError(f"--device {name!r}: CUDA is not available on this machine")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"--device {name!r}: only {torch.cuda.device_count()} CUDA device(s)")
    return device


@dataclass(frozen=True)
class ThreadChoice:
    """How many CPU threads PyTorch is given, and why."""

    threads: int
    cores: int  # the cores this process may run on
    other_runnable: int | None  # runnable tasks besides this one at the start; None: unknown
    reason: str


def other_runnable(samples: int = 5, interval_s: float = 0.02) -> int | None:
    """Runnable tasks other than this process, the fewest seen in a few samples of /proc/stat's
    procs_running (which counts the reader itself): a busy loop is in every sample, a process
    passing by in one. None where there is no /proc/stat."""
    seen = []
    for i in range(samples):
        try:
            text = Path("/proc/stat").read_text()
        except OSError:
            return None
        running = next((int(line.split()[1]) for line in text.splitlines()
                        if line.startswith("procs_running")), None)
        if running is None:
            return None
        seen.append(max(0, running - 1))
        if i < samples - 1:
            time.sleep(interval_s)
    return min(seen)


def usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def choose_threads(requested: int | None, load: dict | None = None) -> ThreadChoice:
    """--threads when given; OMP_NUM_THREADS when set; else PyTorch's default capped at the
    cores that other runnable tasks leave free (at least 1). On a shared machine two threads
    fighting two busy processes for two cores ran 6-30x slower than one thread. `load`: a
    machine_load() just taken, whose count is used rather than sampled again (80 ms)."""
    cores = usable_cores()
    if requested is not None:
        return ThreadChoice(requested, cores, None, "--threads")
    if os.environ.get("OMP_NUM_THREADS"):
        return ThreadChoice(torch.get_num_threads(), cores, None, "OMP_NUM_THREADS")
    others = other_runnable() if load is None else load["other_runnable"]
    if others is None:
        return ThreadChoice(torch.get_num_threads(), cores, None,
                            "PyTorch's default; this system does not say how busy it is")
    threads = max(1, min(torch.get_num_threads(), cores - others))
    return ThreadChoice(threads, cores, others,
                        f"{cores} core(s), {others} other runnable task(s) at the start")


def threads_argument(text: str) -> int:
    """argparse's type for --threads: a whole number from 1 to the cores this process may run
    on. More threads than cores never speeds PyTorch up: --threads 1000 on two cores turned a
    6 s --quick run into minutes."""
    try:
        threads = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if threads < 1:
        raise argparse.ArgumentTypeError(f"{threads}: at least 1 thread")
    if threads > usable_cores():
        raise argparse.ArgumentTypeError(f"{threads}: more than the {usable_cores()} core(s) "
                                         "this process may run on")
    return threads


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """The one --threads flag of every command."""
    parser.add_argument("--threads", type=threads_argument, default=None,
                        help="CPU threads for PyTorch (default: OMP_NUM_THREADS if set, else "
                             "the cores that other running tasks leave free)")


def freeze_imports(argv: list[str] | None = None) -> None:
    """gc.freeze() for a program whose imports are done: the objects alive now, most of them
    torch's, move to a generation the cyclic collector never walks again. Each full collection
    walked them all, and so did the interpreter's exit: `import torch` alone took 0.5 s to
    exit, 0.1 s with them frozen. Refcounting still frees them; only cycles among them stay.
    A command's main passes its argv: None means the process is the command (its console
    script, `python -m` or main.py); Python code that calls main(argv) keeps its collector."""
    if argv is None:
        gc.freeze()


def apply_threads(requested: int | None, quiet: bool = False) -> ThreadChoice:
    """The one thread policy of every command and bench script: choose_threads, applied to
    PyTorch, and said on stdout (stderr stays for the one line of an error); returns the
    choice for the record."""
    choice = choose_threads(requested)
    torch.set_num_threads(choice.threads)
    if not quiet:
        print(f"threads: {choice.threads} ({choice.reason}; --threads N overrides)", flush=True)
    return choice


def machine_load() -> dict:
    """The load average and the other runnable tasks now, for the environment record."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        one = five = fifteen = None
    return {"load_average_1_5_15_min": [one, five, fifteen], "other_runnable": other_runnable()}
