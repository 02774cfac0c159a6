"""The benchmark and the test suite on a busy machine: each run once quiet and once with busy-loop
processes on every core, back to back, so that the slowdown is a ratio measured in one session.

    python bench/under_load.py             # python main.py, quiet then loaded (about 2 minutes)
    python bench/under_load.py --tests     # also the README's test command under load (5 min)

Writes bench/results/under_load_<cpu>.json: the wall times, their ratio, the loaded run's thread
choice and recorded load, and every cell of its latency matrix whose speedup is above 1.5x the
FLOP ratio with the flags it carries (goals: main.py at most 2.5x its quiet time; the tests at
most 240 s; no such cell unflagged).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from distil_rank.benchmark.latency import PLAUSIBLE_OVER_FLOPS, device_name, environment, name_slug
from distil_rank.files import write_json

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def busy_loops(count: int):
    """`count` processes that spin until the block ends."""
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        time.sleep(1.0)  # let the scheduler see them
        yield
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


def timed(command: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def main_run(out: Path) -> tuple[float, dict]:
    seconds = timed([sys.executable, "main.py", "--quiet", "--out", str(out)])
    return seconds, json.loads((out / "distil_rank_summary.json").read_text())


def implausible_cells(summary: dict) -> list[dict]:
    return [{"batch": r["batch"], "speedup": r["speedup"], "flop_ratio": r["flop_ratio"],
             "untrusted": r.get("untrusted", [])}
            for matrix in summary["latency_matrix"].values() for r in matrix["rows"]
            if r["speedup"] > PLAUSIBLE_OVER_FLOPS * r["flop_ratio"]]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tests", action="store_true", help="also time the test suite under load")
    p.add_argument("--loops", type=int, default=os.cpu_count() or 2, help="busy-loop processes")
    p.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    args = p.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # the run's own choice
    with tempfile.TemporaryDirectory() as folder:
        quiet_s, _ = main_run(Path(folder) / "quiet")
        with busy_loops(args.loops):
            loaded_s, loaded = main_run(Path(folder) / "loaded")
            tests_s = timed([sys.executable, "-m", "pytest", "-q"], env) if args.tests else None
    cells = implausible_cells(loaded)
    record = {"environment": environment(torch.device("cpu")), "busy_loops": args.loops,
              "main_quiet_seconds": quiet_s, "main_loaded_seconds": loaded_s,
              "main_slowdown": loaded_s / quiet_s, "tests_loaded_seconds": tests_s,
              "loaded_threads": loaded["environment"]["threads"],
              "loaded_load": loaded["environment"]["load"],
              "cells_above_the_flop_bound": cells,
              "unflagged_cells_above_the_flop_bound": [c for c in cells if not c["untrusted"]]}
    path = Path(args.out_dir) / f"under_load_{name_slug(device_name(torch.device('cpu')))}.json"
    write_json(path, record)
    print(f"main.py: {quiet_s:.1f} s quiet, {loaded_s:.1f} s with {args.loops} busy loops "
          f"({loaded_s / quiet_s:.2f}x; threads {loaded['environment']['threads']['threads']})"
          + (f"; tests under load {tests_s:.0f} s" if tests_s else "")
          + f"; {len(cells)} cell(s) above {PLAUSIBLE_OVER_FLOPS}x the FLOP ratio, "
          f"{len(record['unflagged_cells_above_the_flop_bound'])} unflagged; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
