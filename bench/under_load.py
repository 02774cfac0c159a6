"""Every command on a busy machine: each run once quiet and once with busy-loop processes on
every core, back to back, so that each slowdown is a ratio measured in one session.

    python bench/under_load.py             # every command, quiet then loaded (about 3 minutes)
    python bench/under_load.py --tests 10  # also the README's test command, 10 runs under load
    python bench/under_load.py --only splits compress
    python bench/under_load.py --only --tests 10   # the tests only

The commands, each a small run of what a user would type:
  main       python main.py --quick (the shipped embeddings)
  splits     python -m distil_rank.benchmark.splits --quick
  compress   distil-rank-compress --budget 0.5 on 48 proteins, and
  embed      distil-rank-embed on the same proteins, both with a randomly initialised model of
             esm2_t6_8M_UR50D's shape (no ESM-2 weights can be downloaded here; the compute is
             the real model's)
  calibrate  distil-rank-calibrate over the two shipped embedding files

Writes bench/results/under_load_<cpu>.json: per command the wall times, their ratio and the
thread choice the loaded run printed; the loaded main run's load record and every cell of its
latency matrix whose speedup is above 1.5x the FLOP ratio, with the flags it carries (goals:
every command at most 2.5x its quiet time; no such cell unflagged). With --tests,
bench/results/tests_under_load_<cpu>.json: each test run's exit code, time and last line
(goal: every run passes).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from distil_rank.benchmark.latency import PLAUSIBLE_OVER_FLOPS, device_name, environment, name_slug
from distil_rank.errors import OneLineParser, at_least
from distil_rank.files import writable_folder, write_json

ROOT = Path(__file__).resolve().parents[1]
GOAL = 2.5  # at most this many times the quiet time under load
PROTEINS = 48
ESM2_8M_SHAPE = dict(hidden_size=320, num_hidden_layers=6, num_attention_heads=20,
                     intermediate_size=1280, max_position_embeddings=1026)


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


def random_esm2(folder: Path) -> Path:
    """A randomly initialised ESM-2 of esm2_t6_8M_UR50D's shape and its tokenizer, saved as a
    local transformers folder."""
    import transformers

    vocab = ["<cls>", "<pad>", "<eos>", "<unk>", *"LAGVSERTIDPKQNFYMHWCXBUZO.-", "<null_1>",
             "<mask>"]
    (folder / "vocab.txt").write_text("\n".join(vocab))
    tokenizer = transformers.EsmTokenizer(str(folder / "vocab.txt"))
    config = transformers.EsmConfig(vocab_size=len(vocab), position_embedding_type="rotary",
                                    pad_token_id=1, mask_token_id=len(vocab) - 1,
                                    token_dropout=True, emb_layer_norm_before=False,
                                    **ESM2_8M_SHAPE)
    torch.manual_seed(0)
    transformers.EsmModel(config, add_pooling_layer=False).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def proteins(path: Path) -> Path:
    """PROTEINS random sequences of 100 to 300 residues, seeded."""
    rng = random.Random(0)
    sequences = ("".join(rng.choices("ACDEFGHIKLMNPQRSTVWY", k=rng.randint(100, 300)))
                 for _ in range(PROTEINS))
    path.write_text("".join(f">p{i}\n{seq}\n" for i, seq in enumerate(sequences)))
    return path


def commands(work: Path) -> dict[str, callable]:
    """name -> (run label -> argv): each command's small run, writing under `work`/label."""
    python = sys.executable
    model = work / "esm2_8M_shape"
    fasta = work / "proteins.fasta"
    shards = [str(ROOT / "embeddings_train.pt"), str(ROOT / "embeddings_val.pt")]
    return {
        "main": lambda out: [python, "main.py", "--quick", "--out", str(work / out / "main")],
        "splits": lambda out: [python, "-m", "distil_rank.benchmark.splits", "--quick",
                               "--out", str(work / out / "splits")],
        "compress": lambda out: [python, "-m", "distil_rank.compress", "--model", str(model),
                                 "--fasta", str(fasta), "--budget", "0.5",
                                 "--out", str(work / out / "compress")],
        "embed": lambda out: [python, "-m", "distil_rank.embed", "--model", str(model),
                              "--fasta", str(fasta), "--out", str(work / out / "embeddings.pt")],
        "calibrate": lambda out: [python, "-m", "distil_rank.calibrate", "--shards", *shards,
                                  "--out", str(work / out / "moments.pt")],
    }, (model, fasta)


def timed(command: list[str], env: dict) -> tuple[float, str]:
    """Wall seconds of `command` and its stdout; a failure stops the bench, saying which."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - start, done.stdout


def threads_line(stdout: str) -> str | None:
    """The thread choice a command printed ("threads: N (why...)")."""
    found = re.search(r"^threads: (.*)$", stdout, re.MULTILINE)
    return found.group(1) if found else None


def implausible_cells(summary: dict) -> list[dict]:
    return [{"batch": r["batch"], "speedup": r["speedup"], "flop_ratio": r["flop_ratio"],
             "untrusted": r.get("untrusted", [])}
            for matrix in summary["latency_matrix"].values() for r in matrix["rows"]
            if r["speedup"] > PLAUSIBLE_OVER_FLOPS * r["flop_ratio"]]


def main() -> int:
    p = OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", default=None,
                   help="these commands only (none: only the tests)")
    p.add_argument("--tests", type=at_least(0), default=0, metavar="N",
                   help="also run the README's test command N times under load, recording "
                        "each run's exit code and time")
    p.add_argument("--loops", type=at_least(1), default=os.cpu_count() or 2,
                   help="busy-loop processes")
    p.add_argument("--out-dir", type=writable_folder, default=str(ROOT / "bench" / "results"))
    args = p.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # each its own choice
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        runs, (model, fasta) = commands(work)
        for folder in (model, work / "quiet", work / "loaded"):
            folder.mkdir()
        random_esm2(model)
        proteins(fasta)
        chosen = list(runs) if args.only is None else args.only
        unknown = sorted(set(chosen) - set(runs))
        if unknown:
            p.error(f"unknown command(s) {', '.join(unknown)}; choose from {', '.join(runs)}")
        record = {}
        for name in chosen:
            quiet_s, _ = timed(runs[name]("quiet"), env)
            with busy_loops(args.loops):
                loaded_s, stdout = timed(runs[name]("loaded"), env)
            shown = " ".join(runs[name]("out")[1:]).replace(str(work), "<tmp>")
            record[name] = {"command": "python " + shown.replace(f"{ROOT}/", ""),
                            "quiet_seconds": quiet_s, "loaded_seconds": loaded_s,
                            "slowdown": loaded_s / quiet_s,
                            "within_goal": loaded_s <= GOAL * quiet_s,
                            "loaded_threads": threads_line(stdout)}
            print(f"{name}: {quiet_s:.1f} s quiet, {loaded_s:.1f} s with {args.loops} busy loops "
                  f"({loaded_s / quiet_s:.2f}x); threads under load: {threads_line(stdout)}",
                  flush=True)
        loaded_main = work / "loaded" / "main" / "distil_rank_summary.json"
        main_record = json.loads(loaded_main.read_text()) if loaded_main.exists() else None
        tests = []
        with busy_loops(args.loops) if args.tests else contextlib.nullcontext():
            for k in range(args.tests):
                start = time.perf_counter()
                done = subprocess.run([sys.executable, "-m", "pytest", "-q"], cwd=ROOT,
                                      capture_output=True, text=True, env=env)
                summary = (done.stdout.strip().splitlines() or [""])[-1]
                tests.append({"exit_code": done.returncode, "seconds": time.perf_counter() - start,
                              "summary": summary})
                if done.returncode != 0:  # what failed, for the record
                    tests[-1]["output_tail"] = (done.stdout + done.stderr)[-4000:]
                print(f"tests under load, run {k + 1} of {args.tests}: exit {done.returncode}, "
                      f"{summary}", flush=True)
    cpu = name_slug(device_name(torch.device("cpu")))
    base = {"environment": environment(torch.device("cpu")), "busy_loops": args.loops}
    if record:
        cells = implausible_cells(main_record) if main_record else []
        path = Path(args.out_dir) / f"under_load_{cpu}.json"
        write_json(path, {**base, "goal_slowdown": GOAL, "commands": record,
                          "main_loaded_load": main_record["environment"]["load"]
                          if main_record else None,
                          "cells_above_the_flop_bound": cells,
                          "unflagged_cells_above_the_flop_bound": [c for c in cells
                                                                   if not c["untrusted"]]})
        worst = max(record, key=lambda n: record[n]["slowdown"])
        print(f"worst slowdown {record[worst]['slowdown']:.2f}x ({worst}; goal {GOAL}x); "
              f"{len(cells)} latency cell(s) above {PLAUSIBLE_OVER_FLOPS}x the FLOP ratio, "
              f"{sum(not c['untrusted'] for c in cells)} unflagged; wrote {path}")
    if tests:
        path = Path(args.out_dir) / f"tests_under_load_{cpu}.json"
        write_json(path, {**base, "command": "python -m pytest -q", "runs": tests})
        print(f"the tests passed {sum(t['exit_code'] == 0 for t in tests)} of {len(tests)} "
              f"runs under load; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
