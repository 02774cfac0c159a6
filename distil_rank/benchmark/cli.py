"""The benchmark's command line: `python main.py`, `python -m distil_rank` and `distil-rank`
all run `main`; the pipeline itself is distil_rank.pipeline."""

from __future__ import annotations

import argparse
import sys

from distil_rank import __version__
from distil_rank.benchmark.compressors import HEAD_SWEEP_METHODS, SWEEP_METHODS
from distil_rank.benchmark.config import PRESETS, QUICK, Config, preset_overrides
from distil_rank.errors import OneLineParser, cli_exit_code, seed_argument
from distil_rank.runtime import freeze_imports, threads_argument


def _sweep_help(divisors: tuple[int, ...], quick: tuple[int, ...]) -> str:
    head_only = HEAD_SWEEP_METHODS[len(SWEEP_METHODS):]
    return (f"sweep the rank from D/{max(divisors)} to D/{min(divisors)} for "
            f"{', '.join(SWEEP_METHODS)} and, in a head, {', '.join(head_only)} (D/{max(quick)} "
            f"to D/{min(quick)} with --quick; default: on)")


def create_parser() -> argparse.ArgumentParser:
    defaults = Config()
    p = OneLineParser(
        prog="distil-rank",
        description="Compress dense layers on protein embeddings to rank r and measure what "
                    "is kept. The same as python main.py and python -m distil_rank.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--train", default=defaults.train_path,
                   help="training embeddings: .pt (dict with 'embeddings', or a 2-D tensor), "
                        f".npy, .npz (default: {defaults.train_path})")
    p.add_argument("--val", default=defaults.val_path,
                   help="validation embeddings (same formats, same dimension D); all fidelity "
                        f"figures are measured on these (default: {defaults.val_path})")
    p.add_argument("--preset", choices=sorted({*PRESETS, *(n.rsplit("-", 1)[0] for n in PRESETS)}),
                   default=None,
                   help="start from a named preset (distil_rank/benchmark/config.py's "
                        "PRESETS); flags given beside it still win. published: 1280-d "
                        "synthetic, rank 64, the published recipe, into results/published")
    p.add_argument("--data", choices=("auto", "real", "synthetic"), default=None,
                   help=f"auto: the files if present (the defaults in the working directory, "
                        f"else beside main.py), synthetic 1280-d data if both default files "
                        f"are absent there; real: the files or an error; synthetic: always "
                        f"synthetic (default: {defaults.data})")
    p.add_argument("--rank", type=int, default=None,
                   help=f"target rank r (default: D // {defaults.rank_divisor}, about 10x fewer "
                        "parameters)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"distillation steps (default {defaults.distill.steps}; "
                        f"{QUICK['distill']['steps']} with --quick)")
    p.add_argument("--device", default=defaults.device,
                   help="auto (CUDA when available; the default), cpu, cuda or cuda:N")
    p.add_argument("--seed", type=seed_argument, default=defaults.seed,
                   help=f"seeds teachers, synthetic data, splits and distillation (default: "
                        f"{defaults.seed})")
    p.add_argument("--out", default=None,
                   help=f"folder for the JSON summary and the figure (default: {defaults.out}; "
                        f"{QUICK['out']} with --quick, so a smoke run never "
                        "overwrites the cited results)")
    p.add_argument("--teacher-init", choices=("zero", "small", "default"), default=None,
                   help=f"the Task-Trained teacher's start (default: {defaults.teacher.init}); "
                        "default is PyTorch's init, the recipe before the ablation "
                        "(docs/results.md)")
    p.add_argument("--threads", type=threads_argument, default=None,
                   help="CPU threads for PyTorch (default: OMP_NUM_THREADS if set, else "
                        "PyTorch's own, capped at the cores other runnable processes leave "
                        "free); another count rounds differently, so the JSON records it")
    p.add_argument("--quiet", action="store_true",
                   help="print only errors and the last line (where the results went)")
    p.add_argument("--seeds", type=int, default=None,
                   help=f"repetitions with seeds seed, seed+1, ... (default {defaults.num_seeds}; "
                        f"{QUICK['num_seeds']} with --quick); teachers, the selection "
                        "split "
                        "and distillation are reseeded, the JSON gives mean and std")
    p.add_argument("--sweep", action=argparse.BooleanOptionalAction, default=None,
                   help=_sweep_help(defaults.sweep_divisors, QUICK["sweep_divisors"]))
    p.add_argument("--quick", action="store_true",
                   help="smoke run of a few seconds: fewer steps and timing repeats, numbers "
                        "not meant to be cited")
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    """Defaults, then the preset, then --quick, then every flag given: the later wins."""
    config = Config(train_path=args.train, val_path=args.val, device=args.device, seed=args.seed)
    if args.preset:
        config = config.updated(preset_overrides(args.preset))
    if args.quick:
        config = config.updated({**QUICK, "quick": True})
    given = {"num_seeds": args.seeds, "data": args.data, "rank": args.rank, "out": args.out,
             "sweep": args.sweep, "threads": args.threads, "quiet": args.quiet or None}
    config = config.updated({k: v for k, v in given.items() if v is not None})
    if args.steps is not None:
        config = config.updated({"distill": {"steps": args.steps}})
    if args.teacher_init is not None:
        config = config.updated({"teacher": {"init": args.teacher_init}})
    return config


def main(argv: list[str] | None = None) -> int:
    args = create_parser().parse_args(argv)
    from distil_rank.benchmark.pipeline import run  # after parsing: --help needs no torch start-up

    freeze_imports(argv)
    return cli_exit_code(lambda: run(config_from_args(args)))


if __name__ == "__main__":
    sys.exit(main())
