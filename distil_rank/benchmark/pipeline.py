"""The benchmark as phases, each over every seed at once:

    data -> teachers -> closed forms and warm starts -> one batched distillation of every
    student -> metrics -> report

Splitting the fits into a closed-form phase and a training phase is what lets every student of
the run (each seed, teacher, compressor and swept rank) train together in `train_students`,
instead of one small model at a time waiting on Python.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from distil_rank.benchmark.compressors import (
    COMPRESSORS,
    HEAD_COMPRESSORS,
    STUDENT,
    BenchmarkData,
    FitContext,
    FitMemo,
    compress_teacher,
    fit_ranks,
    sweep_ranks,
    sweep_teacher,
    teacher_entry,
    train_students,
    warm_up,
)
from distil_rank.benchmark.config import DEFAULT_TRAIN, DEFAULT_VAL, Config
from distil_rank.benchmark.data import Dataset, resolve_data
from distil_rank.benchmark.latency import environment, latency_matrix, modes_for
from distil_rank.benchmark.report import (
    headline,
    latency_table,
    results_table,
    task_table,
    teacher_latency_table,
    write_results,
)
from distil_rank.benchmark.results import Results, RunSummary, TeacherEntry, summarise_seeds
from distil_rank.benchmark.stats import effective_rank
from distil_rank.benchmark.teachers import (
    HEAD_NAME,
    build_teachers_of_seeds,
    fitness_heads,
)
from distil_rank.embeddings import split_indices
from distil_rank.errors import InputError
from distil_rank.files import check_writable_folder
from distil_rank.lowrank import check_rank, flop_ratio, largest_saving_rank
from distil_rank.moments import input_moments
from distil_rank.runtime import choose_threads, machine_load, resolve_device, stage_seed

UNDEFINED_REASONS = {
    "explained_variance": "0 / 0: the teacher's output does not vary on the validation rows "
                          "(or varies below float32 resolution)",
    "spearman": "the fitness or the prediction is constant on the validation rows",
}


@dataclass
class SeedRun:
    """One seed's rows, teachers and fitted students, filled phase by phase."""

    seed: int
    data: BenchmarkData
    teachers: dict = field(default_factory=dict)  # name -> teachers.Teacher
    head_training: dict | None = None
    fits: dict = field(default_factory=dict)  # name -> {rank: {method: Student}}
    memo: FitMemo = field(default_factory=FitMemo)  # decompositions its fits share
    entries: dict[str, TeacherEntry] = field(default_factory=dict)

    def students(self, rank: int | None = None) -> list:
        """Every fitted student of this seed, over teachers, ranks and methods; with `rank`,
        those at that rank only (the ones its records report)."""
        return [s for fits in self.fits.values() for at, at_rank in fits.items()
                if rank in (None, at) for s in at_rank.values()]


# ----------------------------------------------------------------------------- checks


def resolve_rank(rank: int | None, dim: int, divisor: int) -> int:
    if rank is None:
        return max(1, dim // divisor)
    try:
        return check_rank(rank, dim - 1, "--rank")
    except ValueError as err:
        raise InputError(f"{err} for {dim}-d embeddings (a rank of D or more saves nothing)") \
            from None


def undefined_metrics(entries: dict) -> dict[str, str]:
    """{metric key: why it is null} for every metric that is undefined (NaN, written as null)
    somewhere in the teachers' entries."""
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

    walk(entries)
    return dict(sorted(found.items()))


def fitness_usable(dataset: Dataset, selection_fraction: float) -> tuple[bool, str]:
    """Whether both splits carry fitness labels a head can learn from, and if not, why."""
    train, val = dataset.train, dataset.val
    if train.fitness is None or val.fitness is None:
        return False, "no fitness labels in both splits: a head trained on them cannot be built"
    if bool((train.fitness == train.fitness[0]).all()):
        return False, "fitness is the same for every training row: there is nothing to learn"
    fit = len(split_indices(train.num_rows, selection_fraction, 0)[0])  # the same for any seed
    if fit < 2:
        return False, (f"{train.num_rows} training rows leave {fit} fit row(s) beside the "
                       "selection rows: a head needs at least 2")
    return True, ""


def check_settings(config: Config) -> None:
    counts = {"--steps": config.distill.steps, "teacher.steps": config.teacher.steps,
              "distill.batch_size": config.distill.batch_size,
              "latency.repeats": config.latency.repeats, "--seeds": config.num_seeds}
    for name, value in counts.items():
        if value < 1:
            raise InputError(f"{name} = {value}: must be at least 1")
    if config.threads is not None and config.threads < 1:
        raise InputError(f"--threads {config.threads}: must be at least 1")
    if config.distill.patience is not None and config.distill.patience < 1:
        raise InputError(f"distill.patience = {config.distill.patience}: must be at least 1 "
                         "(or None)")
    check_writable_folder(config.out, "--out")  # now, not after minutes of work


def physical_memory() -> int | None:
    """This machine's memory in bytes, where the OS says (None elsewhere)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(seeds: int, dim: int, total: int | None = None) -> None:
    """Refuse, before any training, a run whose teachers cannot fit: every seed's D x D
    teachers train as one stack, each weight with its gradient and two Adam moments (16 bytes
    a weight), which must stay within half of the machine's memory."""
    total = physical_memory() if total is None else total
    need = 16 * seeds * dim * dim
    if total is not None and need > total / 2:
        raise InputError(f"--seeds {seeds}: the teachers of {seeds} seeds at D = {dim}, trained "
                         f"as one stack, need about {need / 2**30:.1f} GiB, more than half of "
                         f"this machine's {total / 2**30:.1f} GiB")


# ----------------------------------------------------------------------------- phases


def load_data(config: Config) -> Dataset:
    dataset = resolve_data(
        config.train_path, config.val_path, config.data, (DEFAULT_TRAIN, DEFAULT_VAL),
        synthetic=dict(n_train=config.synthetic_train, n_val=config.synthetic_val,
                       dim=config.synthetic_dim, latent_dim=config.synthetic_latent_dim),
        seed=stage_seed(config.seed, "synthetic"),
    )
    train = dataset.train
    if bool((train.embeddings == train.embeddings[0]).all()):
        raise InputError(f"{train.source}: every row is the same embedding: nothing varies, so "
                         "there is nothing to calibrate a compressor on")
    return dataset


def seed_rows(dataset: Dataset, seed: int, config: Config, has_fitness: bool) -> BenchmarkData:
    """The fit and held-out selection rows of one seed (the train/validation split is fixed)."""
    train, val = dataset.train, dataset.val
    fit_rows, selection_rows = split_indices(train.num_rows, config.selection_fraction,
                                             stage_seed(seed, "selection"))
    data = BenchmarkData(train=train.embeddings, fit=train.embeddings[fit_rows],
                         selection=train.embeddings[selection_rows], val=val.embeddings)
    if has_fitness:
        data = replace(data, train_fitness=train.fitness, val_fitness=val.fitness,
                       fit_fitness=train.fitness[fit_rows],
                       selection_fitness=train.fitness[selection_rows])
    return data


def build_teachers(runs: list[SeedRun], config: Config) -> None:
    """Every run's teachers, those of all seeds trained as one stack: the linear ones, and the
    Fitness-Head where the data has fitness."""
    linear = build_teachers_of_seeds(runs[0].data.train, config.teacher,
                                     [run.seed for run in runs])
    for run, teachers in zip(runs, linear):
        run.teachers = teachers
    if runs[0].data.fit_fitness is None:
        return
    heads = fitness_heads([(r.data.fit, r.data.fit_fitness, r.data.selection,
                            r.data.selection_fitness) for r in runs], config.head,
                          [stage_seed(r.seed, f"teachers/{HEAD_NAME}") for r in runs])
    for run, (head, (selection_mse, kept)) in zip(runs, heads):
        run.teachers[HEAD_NAME] = head
        run.head_training = {"chosen_step": kept, "selection_mse": min(selection_mse)}


def _context(run: SeedRun, name: str, config: Config, device: torch.device) -> FitContext:
    return FitContext(run.data, config.distill, device, seed=stage_seed(run.seed, f"distil/{name}"),
                      name=name, readout=run.teachers[name].readout,
                      damping=config.task_damping, probes=config.task_probes, memo=run.memo)


def fit_closed_forms(run: SeedRun, rank: int, config: Config, device: torch.device) -> None:
    """Every compressor at the target rank and, with the sweep, the swept ones at every rank:
    closed forms fitted, distillations left pending for the training phase."""
    ranks = sweep_ranks(run.data.train.shape[1], config.sweep_divisors)
    for name, teacher in run.teachers.items():
        context = _context(run, name, config, device)
        fits = {rank: compress_teacher(teacher.layer, rank, context, train=False)}
        if config.sweep:
            fits = fit_ranks(teacher.layer, ranks, replace(context, seed=stage_seed(
                run.seed, f"sweep/{name}")), fits, train=False)
        run.fits[name] = fits


def measure_seed(run: SeedRun, rank: int, config: Config, device: torch.device) -> None:
    ranks = sweep_ranks(run.data.train.shape[1], config.sweep_divisors)
    for name, teacher in run.teachers.items():
        context = _context(run, name, config, device)
        sweep = sweep_teacher(teacher.layer, ranks, context, run.fits[name]) \
            if config.sweep else None
        run.entries[name] = teacher_entry(
            teacher.layer, run.fits[name][rank], run.data, rank,
            config.latency, device, config.ridge_alpha,
            readout=teacher.readout, sweep=sweep,
            denoising_loss=teacher.losses,
            head_training=run.head_training if name == HEAD_NAME else None)


def latency_matrices(dim: int, rank: int, config: Config, device: torch.device) -> dict:
    """Dense against factorised at several batch sizes: on the CPU, and on CUDA when used. The
    fused kernel's modes are bench/latency.py's: its tuning compiles a few dozen kernels on first
    use, which the default run does not wait for."""
    matrices = {}
    for where in [torch.device("cpu")] + ([device] if device.type == "cuda" else []):
        cuda = where.type == "cuda"
        matrices[where.type] = latency_matrix(
            dim, dim, rank, where, batches=config.latency.batches,
            dtypes=(torch.float32, torch.bfloat16) if cuda else (torch.float32,),
            modes=modes_for(where, fused=False),
            warmup=config.latency.warmup, repeats=config.latency.repeats,
            budget_s=config.latency.budget_s, seed=stage_seed(config.seed, "latency"))
    return matrices


def curves_of(run: SeedRun, rank: int) -> dict:
    """The figure's per-step curves, from one seed."""
    return {"distillation": {name: {m: s.run.losses for m, s in fits[rank].items() if s.run}
                             for name, fits in run.fits.items()},
            "teacher_singular_values": {name: torch.linalg.svdvals(t.layer.weight.double())
                                        for name, t in run.teachers.items()}}


# ----------------------------------------------------------------------------- the run


class Progress:
    """A line per stage, with the seconds since the start and the stages still to come, printed
    and flushed as it happens, so that a log file or a pipe follows the run as a terminal does
    (tqdm's bars appear only on a terminal). Silent with quiet."""

    def __init__(self, stages: list[str], quiet: bool):
        self.started, self.stages, self.quiet = time.perf_counter(), stages, quiet

    def say(self, *lines: str) -> None:
        if not self.quiet:
            print(*lines, sep="\n", flush=True)

    def stage(self, name: str, detail: str = "") -> None:
        left = self.stages[self.stages.index(name) + 1:]
        self.say(f"[{time.perf_counter() - self.started:6.1f} s] {name}{detail}"
                 + (f"; then {', '.join(left)}" if left else ""))


STAGES = ["data", "teachers", "closed forms", "training", "metrics", "latency", "report"]


def run(config: Config) -> RunSummary:
    """The benchmark: data -> teachers -> closed forms -> training -> metrics -> latency ->
    report, each phase over every seed at once."""
    check_settings(config)
    device = resolve_device(config.device)
    load_at_start = machine_load()
    threads = choose_threads(config.threads, load_at_start)
    torch.set_num_threads(threads.threads)
    progress = Progress(STAGES, config.quiet)
    dataset = load_data(config)
    dim = dataset.train.dim
    check_memory(config.num_seeds, dim)
    rank = resolve_rank(config.rank, dim, config.rank_divisor)
    progress.say("config: " + json.dumps(config.as_dict()))  # validated: no error can follow it
    progress.say(f"threads: {threads.threads} ({threads.reason}; --threads N overrides)")
    has_fitness = announce_data(progress, dataset, config, rank, device)
    runs = [SeedRun(seed, seed_rows(dataset, seed, config, has_fitness))
            for seed in config.seeds()]
    warm_up(dim, device)
    progress.stage("teachers", f" of {len(runs)} seed(s), trained as one stack")
    build_teachers(runs, config)
    for i, seed_run in enumerate(runs, 1):
        progress.stage("closed forms", f" and warm starts, seed {seed_run.seed} ({i} of "
                                       f"{len(runs)})")
        fit_closed_forms(seed_run, rank, config, device)
    students = [s for r in runs for s in r.students()]
    progress.stage("training", f": {sum(s.job is not None for s in students)} students "
                               "distilled together")
    train_students(students, device, time_alone=[s for r in runs for s in r.students(rank)])
    for seed_run in runs:
        progress.stage("metrics", f", seed {seed_run.seed}")
        measure_seed(seed_run, rank, config, device)
        view = Results(seed_run.entries)
        progress.say(f"seed {seed_run.seed}:", *results_table(view, console=True), "",
                     *task_table(view, console=True))
    progress.stage("latency", f": dense against rank-r, batch "
                              f"{', '.join(map(str, config.latency.batches))}")
    matrices = latency_matrices(dim, rank, config, device)
    progress.stage("report")
    load = {"start": load_at_start, "end": machine_load()}
    summary = summarise_run(config, dataset, runs, rank, matrices, device, progress.started,
                            {"threads": asdict(threads), "load": load})
    summary.headline = headline(summary)
    curves = {**curves_of(runs[0], rank),
              "embedding_eigenvalues": embedding_spectrum(dataset.train.embeddings).clamp_min(0)}
    json_path, figure_path = write_results(Path(config.out), summary, curves)
    progress.say(*console_report(summary), "", *busy_note(load), summary.headline)
    print(f"wrote {json_path} and {figure_path} "
          f"({summary.environment['run_seconds']:.1f} s)", flush=True)
    return summary


def announce_data(progress: Progress, dataset: Dataset, config: Config, rank: int,
                  device) -> bool:
    """Say what the run reads; whether both splits carry usable fitness labels."""
    train, val = dataset.train, dataset.val
    progress.stage("data", f": {dataset.note}: train {tuple(train.embeddings.shape)}, val "
                           f"{tuple(val.embeddings.shape)}; rank {rank}; device {device}")
    if not dataset.real_data:
        progress.say("note: synthetic data stands in for real embeddings; the JSON says "
                     "real_data: false")
    if flop_ratio(train.dim, train.dim, rank) <= 1:
        saving = largest_saving_rank(train.dim, train.dim, train.dim ** 2)  # biases aside
        progress.say(f"note: at rank {rank} of {train.dim} the factors hold no fewer weights "
                     f"than the dense layer (fewer at rank {saving} and below): this run "
                     "measures fidelity, not a saving")
    has_fitness, skipped_head = fitness_usable(dataset, config.selection_fraction)
    if not has_fitness:
        progress.say(f"note: {HEAD_NAME} teacher and the fitness probe skipped: {skipped_head}")
    if dataset.val_rows_in_train:
        print(f"warning: {dataset.val_rows_in_train} of {val.num_rows} validation rows are also "
              f"training rows: their figures are not held out (data.val.rows_also_in_train)",
              file=sys.stderr, flush=True)
    return has_fitness


def embedding_spectrum(embeddings: torch.Tensor) -> torch.Tensor:
    """The eigenvalues of the embeddings' covariance, largest first."""
    return torch.linalg.eigvalsh(input_moments(embeddings).covariance).flip(0)


def data_record(dataset: Dataset, config: Config, has_fitness: bool) -> dict:
    """The summary's `data`: sources, sizes, provenance, and the embeddings' geometry."""
    train, val = dataset.train, dataset.val
    centred = train.embeddings.double() - train.embeddings.double().mean(0)
    return {
        "train": {"source": train.source, "rows": train.num_rows,
                  "selection_fraction": config.selection_fraction},
        "val": {"source": val.source, "rows": val.num_rows,
                "rows_also_in_train": dataset.val_rows_in_train},
        "has_fitness": has_fitness,
        "provenance": train.provenance,
        "embedding_mean_norm": train.embeddings.double().mean(0).norm().item(),
        "embedding_spread_rms_norm": centred.norm(dim=1).pow(2).mean().sqrt().item(),
        "effective_rank": effective_rank(embedding_spectrum(train.embeddings)),
    }


def summarise_run(config: Config, dataset: Dataset, runs: list[SeedRun], rank: int,
                  matrices: dict, device: torch.device, started: float,
                  machine: dict) -> RunSummary:
    """The run's summary, built once: every teacher combined over seeds, and the run's facts."""
    names = list(runs[0].teachers)
    entries = {name: summarise_seeds([r.entries[name] for r in runs]) for name in names}
    has_fitness, skipped_head = fitness_usable(dataset, config.selection_fraction)
    return RunSummary(
        real_data=dataset.real_data, data_note=dataset.note, target_rank=rank,
        input_dim=dataset.train.dim, teachers=names, entries=entries,
        methods=list(COMPRESSORS) + (list(HEAD_COMPRESSORS) if has_fitness else []),
        student_method=STUDENT, skipped_teachers={} if has_fitness else {HEAD_NAME: skipped_head},
        seeds=config.seeds(), latency_matrix=matrices,
        data=data_record(dataset, config, has_fitness), config=config.as_dict(),
        environment={**environment(device), **machine,
                     "run_seconds": time.perf_counter() - started},
        undefined=undefined_metrics(entries))  # run_seconds: the figure's rendering excluded


def busy_note(load: dict) -> list[str]:
    """A line when the machine was busy during the run: its timings are then suspect."""
    others = [load[when]["other_runnable"] or 0 for when in ("start", "end")]
    if not any(others):
        return []
    return [f"note: the machine was busy ({others[0]} other runnable task(s) at the start, "
            f"{others[1]} at the end): latency figures were taken under load, and those that "
            "cannot be trusted are flagged"]


def console_report(summary: RunSummary) -> list[str]:
    """The run's closing tables: fidelity and task over seeds, latency."""
    view = summary.results()
    return [f"over seeds {summary.seeds} (mean ± std; timings: median):",
            *results_table(view, console=True), "", *task_table(view, console=True), "",
            *teacher_latency_table(view, console=True),
            *(line for m in summary.latency_matrix.values()
              for line in ["", *latency_table(m, "latency", console=True)])]
