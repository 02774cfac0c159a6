"""The default thread count: what --threads or OMP_NUM_THREADS say, else PyTorch's default
capped at the cores that other runnable processes leave free."""

import subprocess
import sys
import time

import torch

from distil_rank import runtime


def test_threads_are_capped_at_the_free_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runtime, "usable_cores", lambda: 4)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    for others, expected in ((0, 4), (1, 3), (3, 1), (7, 1)):
        monkeypatch.setattr(runtime, "other_runnable", lambda o=others: o)
        choice = runtime.choose_threads(None)
        assert (choice.threads, choice.other_runnable) == (expected, others)
    assert runtime.choose_threads(3).threads == 3  # --threads wins, whatever the load
    monkeypatch.setattr(runtime, "other_runnable", lambda: None)  # no /proc/stat
    assert runtime.choose_threads(None).threads == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert runtime.choose_threads(None).reason == "OMP_NUM_THREADS"


def test_a_busy_loop_is_seen_as_another_runnable_process():
    if runtime.other_runnable() is None:
        return  # no /proc/stat on this system: nothing to count with
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        assert runtime.other_runnable() >= 1
    finally:
        busy.kill()
        busy.wait()
