"""Distil-Rank benchmark: how far can a dense projection on protein-language-model embeddings be
shrunk to rank r while keeping its function, and how much faster does it run?

    python main.py                      # shipped ESM-2 embeddings, default rank D/20
    python main.py --quick              # a smoke run of a few seconds
    python main.py --train a.pt --val b.pt --rank 32 --device cuda

It parses nothing itself: distil_rank/benchmark/cli.py does, and distil_rank/benchmark/pipeline.py
runs the phases (data -> teachers -> closed forms -> one batched distillation of every student ->
metrics -> latency -> report). `python -m distil_rank` and `distil-rank` are the same. Writes
results/distil_rank_summary.json and results/distil_rank_final_report.png.
"""

import sys

from distil_rank.benchmark.cli import main

if __name__ == "__main__":
    sys.exit(main())
