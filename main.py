"""Distil-Rank benchmark: how far can a dense projection on protein-language-model embeddings be
shrunk to rank r while keeping its function, and how much faster does it run?

    python main.py                      # shipped ESM-2 embeddings, default rank D/20
    python main.py --quick              # a smoke run of a few seconds
    python main.py --train a.pt --val b.pt --rank 32 --device cuda

Pipeline: config -> data -> teachers -> compress -> measure -> report.
Writes results/distil_rank_summary.json and results/distil_rank_final_report.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

from distil_rank.benchmark import (
    COMPRESSORS,
    HEAD_COMPRESSORS,
    STUDENT,
    BenchmarkData,
    FitContext,
    compress_teacher,
    summarise_seeds,
    sweep_ranks,
    sweep_teacher,
    teacher_entry,
    warm_up,
)
from distil_rank.config import (
    DEFAULT_TRAIN,
    DEFAULT_VAL,
    PRESET_ALIASES,
    PRESETS,
    Config,
    preset_overrides,
    quick_overrides,
    resolve_device,
    stage_seed,
)
from distil_rank.data import resolve_data, split_indices
from distil_rank.distill import DistillSettings
from distil_rank.errors import InputError, OneLineParser, cli_exit_code
from distil_rank.files import check_writable_folder
from distil_rank.lowrank import check_rank
from distil_rank.moments import input_moments
from distil_rank.report import (
    latency_table,
    results_table,
    task_table,
    teacher_latency_table,
    write_results,
)
from distil_rank.stats import effective_rank
from distil_rank.teachers import (
    HEAD_NAME,
    HeadSettings,
    TeacherSettings,
    build_teachers,
    fitness_head,
)
from distil_rank.timing import LatencySettings, environment, latency_matrix


def create_parser() -> argparse.ArgumentParser:
    defaults = Config()
    p = OneLineParser(
        description="Compress dense layers on protein embeddings to rank r and measure what "
                    "is kept.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--train", default=defaults.train_path,
                   help="training embeddings: .pt (dict with 'embeddings', or a 2-D tensor), "
                        ".npy, .npz")
    p.add_argument("--val", default=defaults.val_path,
                   help="validation embeddings (same formats, same dimension D); all fidelity "
                        "figures are measured on these")
    p.add_argument("--preset", choices=sorted({*PRESETS, *PRESET_ALIASES}), default=None,
                   help="start from a named preset (distil_rank/config.py's PRESETS); flags given "
                        "beside it still win. published: 1280-d synthetic, rank 64, the published "
                        "recipe, into results/published")
    p.add_argument("--data", choices=("auto", "real", "synthetic"), default=None,
                   help=f"auto: the files if present, synthetic 1280-d data if both default files "
                        f"are absent; real: the files or an error; synthetic: always synthetic "
                        f"(default: {defaults.data})")
    p.add_argument("--rank", type=int, default=None,
                   help=f"target rank r (default: D // {defaults.rank_divisor}, about 10x fewer "
                        "parameters)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"distillation steps (default {defaults.steps}; "
                        f"{quick_overrides()['steps']} with --quick)")
    p.add_argument("--device", default=defaults.device,
                   help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=defaults.seed,
                   help="seeds teachers, synthetic data, splits and distillation")
    p.add_argument("--out", default=None,
                   help=f"folder for the JSON summary and the figure (default: {defaults.out})")
    p.add_argument("--seeds", type=int, default=None,
                   help=f"repetitions with seeds seed, seed+1, ... (default {defaults.num_seeds}; "
                        f"{quick_overrides()['num_seeds']} with --quick); teachers, the selection "
                        "split "
                        "and distillation are reseeded, the JSON gives mean and std")
    p.add_argument("--sweep", action=argparse.BooleanOptionalAction, default=None,
                   help="sweep the rank from D/80 to D/4 for svd, data_aware and distil_da "
                        "(default: on)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run of a few seconds: fewer steps and timing repeats, numbers "
                        "not meant to be cited")
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    """Defaults, then the preset, then --quick, then every flag given: the later wins."""
    overrides = preset_overrides(args.preset) if args.preset else {}
    if args.quick:
        overrides.update(quick_overrides(), quick=True)
    given = {"steps": args.steps, "num_seeds": args.seeds, "data": args.data, "rank": args.rank,
             "out": args.out, "sweep": args.sweep}
    overrides.update({key: value for key, value in given.items() if value is not None})
    return Config(train_path=args.train, val_path=args.val, device=args.device, seed=args.seed,
                  **overrides)


# ----------------------------------------------------------------------------- checks


def resolve_rank(rank: int | None, dim: int, divisor: int) -> int:
    if rank is None:
        return max(1, dim // divisor)
    try:
        return check_rank(rank, dim - 1, "--rank")
    except ValueError as err:
        raise InputError(f"{err} for {dim}-d embeddings (a rank of D or more saves nothing)") \
            from None


UNDEFINED_REASONS = {
    "explained_variance": "0 / 0: the teacher's output does not vary on the validation rows "
                          "(or varies below float32 resolution)",
    "spearman": "the fitness or the prediction is constant on the validation rows",
}


def undefined_metrics(summary: dict) -> dict[str, str]:
    """{metric key: why it is null} for every metric that is undefined (NaN, written as null)
    somewhere in the summary."""
    found = {}

    def walk(value, key=""):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, k)
        elif isinstance(value, list):
            for v in value:
                walk(v, key)
        elif isinstance(value, float) and value != value:
            family = "spearman" if "spearman" in key else "explained_variance" \
                if "explained_variance" in key else key
            found[key] = UNDEFINED_REASONS.get(family, "not defined for this data")

    walk({t: summary[t] for t in summary["teachers"]})
    return dict(sorted(found.items()))


def fitness_usable(train_fitness, val_fitness) -> tuple[bool, str]:
    """Whether both splits carry fitness labels a head can learn from, and if not, why."""
    if train_fitness is None or val_fitness is None:
        return False, "no fitness labels in both splits: a head trained on them cannot be built"
    if bool((train_fitness == train_fitness[0]).all()):
        return False, "fitness is the same for every training row: there is nothing to learn"
    return True, ""


def check_settings(config: Config) -> None:
    for name in ("steps", "teacher_steps", "batch_size", "latency_repeats", "num_seeds"):
        if getattr(config, name) < 1:
            raise InputError(f"{name} = {getattr(config, name)}: must be at least 1")
    check_writable_folder(config.out, "--out")  # now, not after minutes of work


# ----------------------------------------------------------------------------- the pipeline


def run_seed(seed: int, data: BenchmarkData, rank: int, config: Config,
             device: torch.device) -> tuple[dict, dict]:
    """Teachers, compressors and measurements for one seed: ({teacher: entry}, curves)."""
    teachers, denoising_loss = build_teachers(data.train, config.settings(TeacherSettings),
                                              stage_seed(seed, "teachers"))
    curves = {"distillation": {}, "teacher_singular_values": {}}
    head_training = None
    if data.fit_fitness is not None:
        teachers[HEAD_NAME], (selection_mse, kept) = fitness_head(
            data.fit, data.fit_fitness, data.selection, data.selection_fitness,
            config.settings(HeadSettings), stage_seed(seed, f"teachers/{HEAD_NAME}"))
        head_training = {"chosen_step": kept, "selection_mse": min(selection_mse)}
    ranks = sweep_ranks(data.train.shape[1], config.sweep_divisors)
    distill_settings, latency = config.settings(DistillSettings), config.settings(LatencySettings)
    entries = {}
    for name, teacher in teachers.items():
        layer = teacher.layer
        context = FitContext(data, distill_settings, device, stage_seed(seed, f"distil/{name}"),
                             name, teacher.readout, config.task_damping, config.task_probes)
        students = compress_teacher(layer, rank, context)
        sweep = None
        if config.sweep:
            sweep_context = replace(context, seed=stage_seed(seed, f"sweep/{name}"))
            sweep = sweep_teacher(layer, ranks, sweep_context, {rank: students})
        entries[name] = teacher_entry(
            layer, students, data, rank, latency, device, config.ridge_alpha,
            readout=teacher.readout, sweep=sweep,
            denoising_loss=denoising_loss if name == "Task-Trained" else None,
            head_training=head_training if name == HEAD_NAME else None)
        curves["distillation"][name] = {m: s.run.losses for m, s in students.items() if s.run}
        curves["teacher_singular_values"][name] = torch.linalg.svdvals(layer.weight.double())
    return entries, curves


def run(config: Config) -> dict:
    check_settings(config)
    device = resolve_device(config.device)
    print("config:", json.dumps(config.as_dict()), flush=True)

    # data
    dataset = resolve_data(
        config.train_path, config.val_path, config.data, (DEFAULT_TRAIN, DEFAULT_VAL),
        synthetic=dict(n_train=config.synthetic_train, n_val=config.synthetic_val,
                       dim=config.synthetic_dim, latent_dim=config.synthetic_latent_dim),
        seed=stage_seed(config.seed, "synthetic"),
    )
    train, val = dataset.train, dataset.val
    dim = train.dim
    rank = resolve_rank(config.rank, dim, config.rank_divisor)
    print(f"data: {dataset.note}: train {tuple(train.embeddings.shape)}, "
          f"val {tuple(val.embeddings.shape)}; rank {rank}; device {device}", flush=True)
    if not dataset.real_data:
        print("note: synthetic data stands in for real embeddings; the JSON says real_data: false",
              flush=True)
    if bool((train.embeddings == train.embeddings[0]).all()):
        raise InputError(f"{train.source}: every row is the same embedding: nothing varies, so "
                         "there is nothing to calibrate a compressor on")
    has_fitness, skipped_head = fitness_usable(train.fitness, val.fitness)
    if not has_fitness:
        print(f"note: {HEAD_NAME} teacher and the fitness probe skipped: {skipped_head}",
              flush=True)
    embedding_spectrum = torch.linalg.eigvalsh(input_moments(train.embeddings).covariance).flip(0)

    # teachers, compressors and measurements, once per seed
    warm_up(dim, device)
    per_seed, first_curves = [], None
    for seed in config.seeds():
        fit_rows, selection_rows = split_indices(train.num_rows, config.selection_fraction,
                                                 stage_seed(seed, "selection"))
        data = BenchmarkData(train=train.embeddings, fit=train.embeddings[fit_rows],
                             selection=train.embeddings[selection_rows], val=val.embeddings)
        if has_fitness:
            data = replace(data, train_fitness=train.fitness, val_fitness=val.fitness,
                           fit_fitness=train.fitness[fit_rows],
                           selection_fitness=train.fitness[selection_rows])
        entries, curves = run_seed(seed, data, rank, config, device)
        per_seed.append(entries)
        first_curves = first_curves or curves
        print(f"seed {seed}:", *results_table(entries), "", *task_table(entries), sep="\n",
              flush=True)
    names = list(per_seed[0])
    teachers = {name: summarise_seeds([entries[name] for entries in per_seed]) for name in names}

    # the latency matrix: dense against factorised at several batch sizes
    matrix_devices = [torch.device("cpu")] + ([device] if device.type == "cuda" else [])
    latency_matrices = {}
    for matrix_device in matrix_devices:
        cuda = matrix_device.type == "cuda"
        latency_matrices[matrix_device.type] = latency_matrix(
            dim, dim, rank, matrix_device, batches=config.latency_batches,
            dtypes=(torch.float32, torch.bfloat16) if cuda else (torch.float32,),
            modes=("eager", "cuda_graph") if cuda else ("eager",),
            warmup=config.latency_warmup, repeats=config.latency_repeats,
            budget_s=config.latency_budget_s, seed=stage_seed(config.seed, "latency"))

    # report
    centred = train.embeddings.double() - train.embeddings.double().mean(0)
    summary = {
        "real_data": dataset.real_data,
        "data_note": dataset.note,
        "target_rank": rank,
        "input_dim": dim,
        "teachers": names,
        "methods": list(COMPRESSORS) + (list(HEAD_COMPRESSORS) if has_fitness else []),
        "student_method": STUDENT,
        "skipped_teachers": {} if has_fitness else {HEAD_NAME: skipped_head},
        "seeds": config.seeds(),
        **teachers,
        "latency_matrix": latency_matrices,
        "data": {
            "train": {"source": train.source, "rows": train.num_rows,
                      "selection_fraction": config.selection_fraction},
            "val": {"source": val.source, "rows": val.num_rows},
            "has_fitness": has_fitness,
            "provenance": train.provenance,
            "embedding_mean_norm": train.embeddings.double().mean(0).norm().item(),
            "embedding_spread_rms_norm": centred.norm(dim=1).pow(2).mean().sqrt().item(),
            "effective_rank": effective_rank(embedding_spectrum),
        },
        "config": config.as_dict(),
        "environment": environment(device),
    }
    summary["undefined"] = undefined_metrics(summary)
    first_curves["embedding_eigenvalues"] = embedding_spectrum.clamp_min(0)
    json_path, figure_path = write_results(Path(config.out), summary, first_curves)
    print(f"over seeds {config.seeds()} (mean ± std; timings: median):",
          *results_table(teachers), "", *task_table(teachers), "", *teacher_latency_table(teachers),
          *(line for m in latency_matrices.values() for line in ["", *latency_table(m, "latency")]),
          sep="\n", flush=True)
    print(f"wrote {json_path} and {figure_path}", flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = create_parser().parse_args(argv)
    return cli_exit_code(lambda: run(config_from_args(args)))


if __name__ == "__main__":
    sys.exit(main())
