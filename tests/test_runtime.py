"""The default thread count: what --threads or OMP_NUM_THREADS say, else PyTorch's default
capped at the cores that other runnable processes leave free."""

import gc
import subprocess
import sys
import time

import pytest
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
    taken = {"other_runnable": 2}  # a machine_load() just taken: its count, not a new sample
    assert runtime.choose_threads(None, taken).threads == 2
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


@pytest.mark.parametrize("module", ["distil_rank.benchmark.cli", "distil_rank.compress",
                                    "distil_rank.embed", "distil_rank.calibrate",
                                    "distil_rank.benchmark.splits"])
def test_every_command_takes_the_one_threads_flag(module, capsys):
    import importlib

    parser = importlib.import_module(module).create_parser()
    assert "--threads" in parser.format_help()
    with pytest.raises(SystemExit) as done:
        parser.parse_args(["--threads", "0"])
    assert done.value.code == 2
    assert "--threads: 0: at least 1 thread" in capsys.readouterr().err


def test_threads_above_the_cores_are_refused(monkeypatch):
    """--threads 1000 on two cores ran a 6 s --quick run for minutes: the flag stops at the
    cores this process may run on, and takes exactly that many."""
    import argparse

    from distil_rank import runtime

    monkeypatch.setattr(runtime, "usable_cores", lambda: 3)
    assert runtime.threads_argument("3") == 3
    with pytest.raises(argparse.ArgumentTypeError, match="4: more than the 3 core"):
        runtime.threads_argument("4")


def test_apply_threads_sets_says_and_returns_the_choice(capsys, monkeypatch):
    from distil_rank.runtime import apply_threads

    before = torch.get_num_threads()
    try:
        choice = apply_threads(1)
        assert torch.get_num_threads() == 1 and choice.threads == 1
        assert choice.reason == "--threads"
        assert capsys.readouterr().out == "threads: 1 (--threads; --threads N overrides)\n"
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert apply_threads(None, quiet=True).reason == "OMP_NUM_THREADS"
        assert capsys.readouterr().out == ""
    finally:
        torch.set_num_threads(before)


def test_a_program_freezes_its_imports_and_a_call_from_python_does_not():
    """freeze_imports: a command's main given argv (Python code calling it) leaves the caller's
    collector alone; run as the program (argv None) every object alive leaves its walk."""
    assert gc.get_freeze_count() == 0  # no command called in this process froze it
    runtime.freeze_imports(["--quick"])
    assert gc.get_freeze_count() == 0
    tracked = len(gc.get_objects())
    try:
        runtime.freeze_imports()
        assert gc.get_freeze_count() >= tracked > 10_000 and len(gc.get_objects()) < 100
    finally:
        gc.unfreeze()


def test_a_count_flag_takes_whole_numbers_from_its_minimum():
    import argparse

    from distil_rank.errors import at_least

    count = at_least(1)
    assert count("1") == 1 and count("40") == 40 and at_least(0)("0") == 0
    for text, said in {"0": "0: at least 1", "-3": "-3: at least 1", "2.5": "'2.5' is not a",
                       "x": "'x' is not a whole number"}.items():
        with pytest.raises(argparse.ArgumentTypeError, match=said):
            count(text)
