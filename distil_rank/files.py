"""Writing files so that a reader never sees half of one."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path

import torch

from distil_rank.errors import InputError


def atomic_write(path: str | Path, write) -> None:
    """Call write(temporary path) beside `path`, then rename over it: a failure or an interrupt
    leaves the old file in place and no temporary behind (write_together with one file)."""
    write_together({Path(path): write})


SIGNALS = {signal.SIGINT, signal.SIGTERM}


def write_together(writers: dict[Path, object]) -> None:
    """Write several files as one: each writer(temporary path) renders its file beside its
    target, then all are swapped in, and if a swap fails the ones before it are rolled back from
    hard links of the old files. The targets keep their old contents or all get the new ones,
    never a mix, and no temporary or backup survives, whenever a signal lands: SIGINT and
    SIGTERM are held off (_signals_held) from the first swap until every backup is gone, and
    from the start of any cleanup until its end. A signal held off until the new files were all
    in place is raised then, marked `outputs_written` (the targets), so that its message can say the
    outputs are complete. Leftovers of an older run killed outright (SIGKILL, power) are
    removed first, with a note on stderr."""
    targets = [Path(target) for target in writers]
    temporaries = [t.parent / f".{t.name}.partial" for t in targets]
    backups = [t.parent / f".{t.name}.previous" for t in targets]
    _remove_leftovers([*temporaries, *backups])
    try:  # one try around writing and swapping: a signal landing between the two is caught too
        for temporary, write in zip(temporaries, writers.values()):
            temporary.parent.mkdir(parents=True, exist_ok=True)
            write(temporary)
        with _signals_held(mark=targets):
            _swap_in(temporaries, targets, backups)
    except BaseException:
        with _signals_held():
            _unlink([*temporaries, *backups])
        raise


def _swap_in(temporaries: list[Path], targets: list[Path], backups: list[Path]) -> None:
    """Rename every temporary over its target, the old files kept as hard-linked backups until
    all are in; on a failure the swapped ones are rolled back. No temporary or backup stays."""
    swapped = []
    try:
        for target, backup in zip(targets, backups):
            if target.exists():
                os.link(target, backup)
        for temporary, target in zip(temporaries, targets):
            os.replace(temporary, target)
            swapped.append(target)
    except BaseException:
        for target, backup in zip(swapped, backups):
            if backup.exists():
                os.replace(backup, target)
            else:
                target.unlink(missing_ok=True)
        raise
    finally:
        _unlink([*temporaries, *backups])


class _signals_held:
    """SIGINT and SIGTERM held off inside: their Python handlers are swapped for one that only
    records the signal (a handler, not a signal mask, because a signal can be delivered to any
    of PyTorch's threads, and Python runs every handler in the main thread), and on the way out
    the first one recorded is passed to the handler that was there. With `mark`, an interrupt
    raised then, after the block ran to its end, gets `outputs_written = mark`. Off the main
    thread, where handlers cannot be set, nothing is held off."""

    def __init__(self, mark: list[Path] | None = None):
        self.mark, self.caught, self.saved = mark, [], {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self.saved[signum] = signal.signal(signum, self._record)
        return self

    def _record(self, signum, frame):
        self.caught.append(signum)

    def __exit__(self, kind, error, trace):
        for signum, handler in self.saved.items():
            signal.signal(signum, handler)
        if not self.caught:
            return False
        signum, handler = self.caught[0], self.saved[self.caught[0]]
        try:
            if callable(handler):
                handler(signum, None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)
        except BaseException as interrupt:
            if kind is None and self.mark is not None:
                interrupt.outputs_written = self.mark
            raise
        return False


def _unlink(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):  # never made
            path.unlink()


def _remove_leftovers(paths: list[Path]) -> None:
    found = [p for p in paths if p.exists() or p.is_symlink()]
    if found:
        with _signals_held():
            _unlink(found)
        print(f"note: removed {', '.join(str(p) for p in found)}, left by an earlier run that "
              "was killed while writing", file=sys.stderr)


def check_writable_folder(path: str | Path, what: str) -> None:
    """Refuse, before any work, a folder that cannot be written: `path` itself when it exists,
    else the nearest folder above it that does (where it would be created)."""
    problem = _folder_problem(Path(path))
    if problem:
        raise InputError(f"{what} {path}: {problem}")


def writable_folder(text: str) -> str:
    """argparse's type for an output folder (every bench script's --out-dir): one that cannot
    be written is a usage error at parsing, before any work (check_writable_folder's rule)."""
    problem = _folder_problem(Path(text))
    if problem:
        raise argparse.ArgumentTypeError(f"{text}: {problem}")
    return text


def _folder_problem(path: Path) -> str | None:
    """Why `path` cannot be written as a folder, or None."""
    if path.exists() and not path.is_dir():
        return "exists and is not a folder"
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        return f"{existing} is not a folder"
    try:
        with _signals_held():  # the probe never outlives an interrupt landing beside it
            fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=existing)
            os.close(fd)
            os.unlink(probe)
    except OSError as err:
        return f"cannot write in {existing} ({err.strerror})"
    return None


def check_writable_file(path: str | Path, what: str, suffixes: tuple[str, ...] = ()) -> None:
    """Refuse, before any work, an output file path whose folder is missing or not writable,
    that names a folder, or whose suffix is not one of `suffixes`."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{what} {path}: is a folder, expected a file path")
    if suffixes and path.suffix.lower() not in suffixes:
        raise InputError(f"{what} {path}: expected a {' or '.join(suffixes)} file")
    if not path.parent.is_dir():
        raise InputError(f"{what} {path}: folder {path.parent} does not exist")
    check_writable_folder(path.parent, what)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; null says "not defined here" (summary["undefined"]: why)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)  # e.g. bytes in a user's provenance: kept readable, never a crash


def json_text(payload: dict) -> str:
    return json.dumps(_jsonable(payload), indent=2, allow_nan=False) + "\n"


def write_json(path: Path, payload: dict) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json_text(payload)))
