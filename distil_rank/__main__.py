"""python -m distil_rank: the benchmark (see `python -m distil_rank --help`)."""

import sys

from distil_rank.benchmark.cli import main

sys.exit(main())
