"""Compare two benchmark summaries' fidelity figures, e.g. before and after a code change.

    python scripts/compare_results.py old_summary.json results/distil_rank_summary.json

For every teacher, compressor and fidelity metric in both files: the old mean ± std over seeds,
the new mean, and whether the two are identical, equal to rounding (a relative difference of at
most 1e-6, as the same code gives on another CPU), within one standard deviation (the larger of
the two runs' stds), or outside it. Exit code 1 when any figure is outside. Last lines name the
settings in which the two runs differ (their configs and their data's row counts), and what sets
the rounding where they differ in it (the device, torch, the CPU threads).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from distil_rank.benchmark.results import Results, RunSummary
from distil_rank.errors import InputError, OneLineParser, first_line

METRICS = ("explained_variance", "cosine", "rel_mse", "spearman")
ROUNDING = 1e-6  # relative: what another CPU's float32 kernels move a figure by
# what sets a run's rounding: its products and sums split their work by device and by thread
ARITHMETIC = {"device_name": "device", "torch": "torch", "torch_threads": "threads"}


def verdict(a: float, b: float, std: float) -> str:
    if a == b:
        return "identical"
    if abs(a - b) <= ROUNDING * max(abs(a), abs(b)):
        return "equal to rounding"
    return "within 1 std" if abs(a - b) <= std else "OUTSIDE 1 std"


def compare(old: Results, new: Results) -> list[tuple]:
    """Every fidelity figure of every teacher and compressor that both runs have."""
    rows = []
    for teacher, entry in old.entries.items():
        if teacher not in new.entries:
            continue
        for method, scores in entry.methods.items():
            theirs = new.entries[teacher].methods.get(method)
            for metric in METRICS:
                a = getattr(scores, metric)
                if theirs is None or a is None:
                    continue
                b = getattr(theirs, metric)
                std = max(run.std(teacher, "methods", method, metric) or 0.0 for run in (old, new))
                rows.append((teacher, method, metric, a, std, b, verdict(a, b, std)))
    return rows


def arithmetic_differences(old: RunSummary, new: RunSummary) -> list[str]:
    """What sets the rounding and differs between the two runs, as "threads 1 -> 2"."""
    settings = [(word, old.environment.get(key), new.environment.get(key))
                for key, word in ARITHMETIC.items()]
    return [f"{word} {a} -> {b}" for word, a, b in settings if a != b]


# config keys that say where a run read or wrote, how it printed or what it timed, none of which
# moves a fidelity figure (the device and threads: arithmetic_differences)
NOT_MEASURED = {"train_path", "val_path", "out", "quiet", "threads", "device", "latency"}


def setting_differences(old: RunSummary, new: RunSummary, shown: int = 6) -> list[str]:
    """The settings that differ between the two runs (their configs, flattened, and their data's
    row counts), as "distill.steps 1000 -> 60"; beyond `shown`, how many more."""
    def flat(tree, prefix=""):
        for key, value in tree.items():
            if not prefix and key in NOT_MEASURED:
                continue
            if isinstance(value, dict):
                yield from flat(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    sides = [dict(flat(run.config)) | {f"data.{part}.rows": run.data[part]["rows"]
                                       for part in ("train", "val")} for run in (old, new)]
    found = [f"{key} {sides[0].get(key)} -> {sides[1].get(key)}"
             for key in sorted(sides[0].keys() | sides[1].keys())
             if sides[0].get(key) != sides[1].get(key)]
    return found[:shown] + ([f"and {len(found) - shown} more"] if len(found) > shown else [])


def load(path: str) -> RunSummary:
    """A summary JSON, or one line saying why the file is not one."""
    try:
        summary = RunSummary.from_json(json.loads(Path(path).read_text()))
        summary.results()
        return summary
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as err:
        raise InputError(f"{path}: cannot be read ({err.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not JSON ({first_line(err)})") from None
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise InputError(f"{path}: not a distil_rank summary ({type(err).__name__}: "
                         f"{first_line(err)})") from None


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument("old")
    p.add_argument("new")
    args = p.parse_args(argv)
    try:
        old, new = load(args.old), load(args.new)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rows = compare(old.results(), new.results())
    print(f"{'teacher':<14}{'method':<12}{'metric':<20}{'old mean':>14}{'std':>11}"
          f"{'new mean':>14}  verdict")
    for teacher, method, metric, a, std, b, said in rows:
        print(f"{teacher:<14}{method:<12}{metric:<20}{a:>14.6g}{std:>11.2g}{b:>14.6g}  {said}")
    outside = sum(row[-1].startswith("OUTSIDE") for row in rows)
    counts = {said: sum(r[-1] == said for r in rows) for said in ("identical", "equal to rounding")}
    print(f"{len(rows)} figures: {counts['identical']} identical, {counts['equal to rounding']} "
          f"equal to rounding ({ROUNDING:g} relative), {len(rows) - outside} within one std, "
          f"{outside} outside")
    settings = setting_differences(old, new)
    if settings:
        print(f"note: the runs differ in what they measured ({'; '.join(settings)}): a figure "
              "outside one std may be the settings', not the code's")
    differences = arithmetic_differences(old, new)
    if differences:
        print(f"note: the runs round differently ({'; '.join(differences)}): a figure can move "
              "by rounding alone, and further where training amplifies it; `--threads N` "
              "repeats a run's threads")
    return 1 if outside else 0


if __name__ == "__main__":
    sys.exit(main())
