"""Compare two benchmark summaries' fidelity figures, e.g. before and after a code change.

    python scripts/compare_results.py old_summary.json results/distil_rank_summary.json

For every teacher, compressor and fidelity metric in both files: the old mean ± std over seeds,
the new mean, and whether the two are identical, within one standard deviation (the larger of
the two runs' stds), or outside it. Exit code 1 when any figure is outside.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

METRICS = ("explained_variance", "cosine", "rel_mse", "spearman")


def std_of(entry: dict, method: str, metric: str) -> float:
    """The std over seeds; older summaries kept it under entry["std"] only when it was present."""
    return ((entry.get("std") or {}).get("methods", {}).get(method, {}).get(metric) or 0.0)


def compare(old: dict, new: dict) -> list[tuple]:
    rows = []
    for teacher in old["teachers"]:
        if teacher not in new:
            continue
        for method, metrics in old[teacher]["methods"].items():
            if method not in new[teacher]["methods"]:
                continue
            for metric in METRICS:
                if metric not in metrics:
                    continue
                a, b = metrics[metric], new[teacher]["methods"][method][metric]
                std = max(std_of(entry[teacher], method, metric) for entry in (old, new))
                verdict = ("identical" if a == b else "within 1 std" if abs(a - b) <= std
                           else "OUTSIDE 1 std")
                rows.append((teacher, method, metric, a, std, b, verdict))
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("old")
    p.add_argument("new")
    args = p.parse_args()
    old, new = (json.loads(Path(path).read_text()) for path in (args.old, args.new))
    rows = compare(old, new)
    print(f"{'teacher':<14}{'method':<12}{'metric':<20}{'old mean':>14}{'std':>11}"
          f"{'new mean':>14}  verdict")
    for teacher, method, metric, a, std, b, verdict in rows:
        print(f"{teacher:<14}{method:<12}{metric:<20}{a:>14.6g}{std:>11.2g}{b:>14.6g}  {verdict}")
    outside = sum(row[-1].startswith("OUTSIDE") for row in rows)
    print(f"{len(rows)} figures: {sum(r[-1] == 'identical' for r in rows)} identical, "
          f"{len(rows) - outside} within one std, {outside} outside")
    return 1 if outside else 0


if __name__ == "__main__":
    sys.exit(main())
