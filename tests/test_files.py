"""Writing outputs as one, whatever moment a signal lands: checked at the file events themselves
(a writer that signals itself, a swap that signals itself), not after a fixed delay."""

import os
import signal
from pathlib import Path

import pytest

from distil_rank import files
from distil_rank.errors import Terminated, _terminate, cli_exit_code
from distil_rank.files import write_together


def pair(folder, text: str):
    return {folder / "a.json": lambda tmp: Path(tmp).write_text(text),
            folder / "b.png": lambda tmp: Path(tmp).write_text(text)}


def state(folder) -> dict:
    """Every file in the folder, hidden ones included, with its text."""
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


@pytest.fixture
def old(tmp_path):
    write_together(pair(tmp_path, "old"))
    assert state(tmp_path) == {"a.json": "old", "b.png": "old"}
    return tmp_path


@pytest.mark.parametrize("signum, stop", [(signal.SIGINT, KeyboardInterrupt),
                                          (signal.SIGTERM, Terminated)])
def test_a_signal_while_rendering_keeps_the_old_pair_and_leaves_nothing(old, signum, stop):
    previous = signal.signal(signal.SIGTERM, _terminate)  # as cli_exit_code installs it
    try:
        def second(tmp):
            Path(tmp).write_text("half")
            os.kill(os.getpid(), signum)  # lands while the second file is being rendered

        writers = {old / "a.json": lambda tmp: Path(tmp).write_text("new"),
                   old / "b.png": second}
        with pytest.raises(stop) as raised:
            write_together(writers)
        assert getattr(raised.value, "outputs_written", None) is None
        assert state(old) == {"a.json": "old", "b.png": "old"}
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("moment", ["after the first link", "after the first swap",
                                    "after the last swap"])
def test_a_signal_during_the_swap_is_held_until_the_new_pair_is_complete(old, moment,
                                                                         monkeypatch):
    calls = {"link": 0, "replace": 0}
    real_link, real_replace = os.link, os.replace

    def link(src, dst):
        real_link(src, dst)
        calls["link"] += 1
        if moment == "after the first link" and calls["link"] == 1:
            os.kill(os.getpid(), signal.SIGINT)

    def replace(src, dst):
        real_replace(src, dst)
        calls["replace"] += 1
        if (moment, calls["replace"]) in {("after the first swap", 1), ("after the last swap", 2)}:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(files.os, "link", link)
    monkeypatch.setattr(files.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt) as raised:
        write_together(pair(old, "new"))
    assert raised.value.outputs_written == [old / "a.json", old / "b.png"]
    assert state(old) == {"a.json": "new", "b.png": "new"}  # no .previous, no .partial


@pytest.mark.parametrize("signum, stop", [(signal.SIGINT, KeyboardInterrupt),
                                          (signal.SIGTERM, Terminated)])
def test_a_signal_between_rendering_and_the_swap_leaves_the_old_pair_only(old, signum, stop,
                                                                         monkeypatch):
    """Every file rendered, the swap's hold not yet begun: the signal lands as the hold is
    entered, before its handlers are in. Found by signalling distil-rank-compress and the
    embedding tool at their file events: both .partial files stayed behind."""
    previous = signal.signal(signal.SIGTERM, _terminate)
    real_enter = files._signals_held.__enter__

    def enter(self):
        if self.mark is not None:
            os.kill(os.getpid(), signum)
        return real_enter(self)

    monkeypatch.setattr(files._signals_held, "__enter__", enter)
    try:
        with pytest.raises(stop):
            write_together(pair(old, "new"))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert state(old) == {"a.json": "old", "b.png": "old"}


def test_a_failed_swap_rolls_back_and_a_signal_then_still_stops(old, monkeypatch):
    real_replace = os.replace
    calls = []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the second target cannot be replaced
            os.kill(os.getpid(), signal.SIGINT)
            raise OSError("disk full (injected)")
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt) as raised:
        write_together(pair(old, "new"))
    assert getattr(raised.value, "outputs_written", None) is None
    monkeypatch.setattr(files.os, "replace", real_replace)
    assert state(old) == {"a.json": "old", "b.png": "old"}


def test_leftovers_of_a_run_killed_outright_are_removed_and_said(old, capsys):
    (old / ".a.json.previous").write_text("old, from a run killed mid-swap")
    (old / ".b.png.partial").write_text("half")
    write_together(pair(old, "new"))
    assert state(old) == {"a.json": "new", "b.png": "new"}
    err = capsys.readouterr().err
    assert ".a.json.previous" in err and ".b.png.partial" in err and "killed" in err


def test_the_command_line_says_whether_its_outputs_were_written(old, capsys, monkeypatch):
    real_replace = os.replace

    def replace(src, dst):  # the signal lands after the last swap
        real_replace(src, dst)
        if str(dst).endswith("b.png"):
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(files.os, "replace", replace)
    assert cli_exit_code(write_together, pair(old, "new")) == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "after its outputs were written, complete" in err[0], err
    assert state(old) == {"a.json": "new", "b.png": "new"}

    def interrupted():
        raise KeyboardInterrupt

    assert cli_exit_code(interrupted) == 130
    assert "before any output was replaced" in capsys.readouterr().err


@pytest.mark.parametrize("signum, stop", [(signal.SIGINT, KeyboardInterrupt),
                                          (signal.SIGTERM, Terminated)])
def test_a_signal_during_the_write_check_leaves_no_probe(old, signum, stop, monkeypatch):
    """check_writable_folder writes and removes a probe file: a signal landing right after the
    probe is made is held until it is gone (scripts/hostile.py --interrupts left
    `.write-check.*` beside distil-rank-compress's outputs)."""
    made = files.tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        probe = made(*args, **kwargs)
        os.kill(os.getpid(), signum)
        return probe

    monkeypatch.setattr(files.tempfile, "mkstemp", mkstemp)
    previous = signal.signal(signal.SIGTERM, _terminate)  # as cli_exit_code installs it
    try:
        with pytest.raises(stop):
            files.check_writable_folder(old, "--out")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert state(old) == {"a.json": "old", "b.png": "old"}
