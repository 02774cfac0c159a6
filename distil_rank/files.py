"""Writing files so that a reader never sees half of one."""

from __future__ import annotations

import json
import math
import os
import signal
import tempfile
from pathlib import Path

import torch

from distil_rank.errors import InputError


def atomic_write(path: str | Path, write) -> None:
    """Call write(temporary path) beside `path`, then rename over it: a failure or an interrupt
    leaves the old file in place and no temporary behind (write_together with one file)."""
    write_together({Path(path): write})


def write_together(writers: dict[Path, object]) -> None:
    """Write several files as one: each writer(temporary path) renders its file beside its
    target, then all are swapped in with SIGINT and SIGTERM held off, and if a swap fails the
    ones before it are rolled back from hard links of the old files. The targets keep their old
    contents or all get the new ones, never a mix, and no temporary file survives."""
    targets = [Path(target) for target in writers]
    temporaries = [t.parent / f".{t.name}.partial" for t in targets]
    backups = [t.parent / f".{t.name}.previous" for t in targets]
    try:
        for temporary, write in zip(temporaries, writers.values()):
            temporary.parent.mkdir(parents=True, exist_ok=True)
            write(temporary)
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
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
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    finally:
        for leftover in (*temporaries, *backups):
            leftover.unlink(missing_ok=True)


def check_writable_folder(path: str | Path, what: str) -> None:
    """Refuse, before any work, a folder that cannot be written: `path` itself when it exists,
    else the nearest folder above it that does (where it would be created)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{what} {path}: exists and is not a folder")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise InputError(f"{what} {path}: {existing} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise InputError(f"{what} {path}: cannot write in {existing} ({err.strerror})") from None


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
