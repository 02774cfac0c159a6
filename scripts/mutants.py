"""Random one-token mutants of distil_rank/, each run against the README's test command: how many
small, realistic bugs the suite catches.

    python scripts/mutants.py --count 20 --seed 7 > mutants.jsonl    # about 15 min on 2 cores

A mutant changes one token of the package's code (not its docstrings or comments): a comparison
(< and <=, > and >=, == and !=), an operator (+ and -, * and /, // and /), `and` and `or`,
`min` and `max`, `True` and `False`, or a small integer n to n + 1. Each runs `python -m pytest
-x -q` in a copy of the working tree (the repository is never touched); a failing or timed-out
run is a catch. One JSON line per mutant, then the count. A mutant that changes no answer
(equivalent) counts as a miss: read the misses before calling one a gap in the tests.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import tokenize
from pathlib import Path

from distil_rank.errors import OneLineParser, at_least

ROOT = Path(__file__).resolve().parents[1]
SWAPS = {"<": "<=", "<=": "<", ">": ">=", ">=": ">", "==": "!=", "!=": "==", "+": "-",
         "-": "+", "*": "/", "//": "/", "and": "or", "or": "and", "min": "max", "max": "min",
         "True": "False", "False": "True"}
UNARY_BEFORE = {"(", "[", ",", "=", "return", ":", "**", "*", "in", "else"}  # - x, *args


def candidates(root: Path) -> list[tuple[str, int, int, int, str, str]]:
    """(file, line, start column, end column, token, replacement) for every mutable token."""
    found = []
    for path in sorted((root / "distil_rank").rglob("*.py")):
        tokens = list(tokenize.generate_tokens(io.StringIO(path.read_text()).readline))
        for before, token in zip([None, *tokens], tokens):
            text = token.string
            if token.type in (tokenize.OP, tokenize.NAME) and text in SWAPS:
                if text in ("+", "-", "*") and (before is None or before.string in UNARY_BEFORE):
                    continue
                new = SWAPS[text]
            elif token.type == tokenize.NUMBER and text.isdigit() and int(text) < 10:
                new = str(int(text) + 1)
            else:
                continue
            found.append((str(path.relative_to(root)), token.start[0], token.start[1],
                          token.end[1], text, new))
    return found


def run_mutant(tree: Path, mutant, timeout: float) -> dict:
    relative, line, start, end, old, new = mutant
    path = tree / relative
    original = path.read_text()
    lines = original.splitlines(keepends=True)
    code = lines[line - 1]
    lines[line - 1] = code[:start] + new + code[end:]
    path.write_text("".join(lines))
    began = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"], cwd=tree,
            capture_output=True, text=True, timeout=timeout,
            env=dict(os.environ, PYTHONPATH=str(tree)))
        caught, said = done.returncode != 0, (done.stdout.strip().splitlines() or [""])[-1]
    except subprocess.TimeoutExpired:
        caught, said = True, f"timed out after {timeout:.0f} s"
    finally:
        path.write_text(original)
    return {"file": relative, "line": line, "old": old, "new": new, "code": code.strip(),
            "caught": caught, "tests": said, "seconds": round(time.perf_counter() - began)}


def main() -> int:
    p = OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=at_least(1), default=20, help="mutants to run (default: 20)")
    p.add_argument("--seed", type=at_least(0), default=0, help="which mutants: a shuffle's seed")
    p.add_argument("--timeout", type=float, default=600, help="seconds per mutant's tests")
    args = p.parse_args()
    chosen = candidates(ROOT)
    random.Random(args.seed).shuffle(chosen)
    caught = 0
    with tempfile.TemporaryDirectory() as folder:
        tree = Path(folder) / "tree"
        shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(
            ".git", "results", "__pycache__", "*.egg-info"))
        for mutant in chosen[:args.count]:
            record = run_mutant(tree, mutant, args.timeout)
            caught += record["caught"]
            print(json.dumps(record), flush=True)
    print(json.dumps({"caught": caught, "of": min(args.count, len(chosen)),
                      "candidates": len(chosen), "seed": args.seed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
