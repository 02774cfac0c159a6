"""One teacher through every compressor, measured: the unit of work of a benchmark run.

A compressor is one function `fit(teacher, rank, context) -> Student` and one entry in
`COMPRESSORS` (every teacher) or `HEAD_COMPRESSORS` (teachers inside a head, whose `readout`
the compressor may use): a `Compressor`, which also names it and gives it its colour, or the
bare function (then the key is its name, and a figure gives it a spare colour). The
benchmark runs, measures and reports every entry; the tables, the figures and the position
splits read its name and colour from here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from distil_rank.benchmark.latency import LatencySettings, measure_latencies
from distil_rank.benchmark.results import DistillRecord, TeacherEntry, method_scores
from distil_rank.distill import (
    DistillJob,
    DistillResult,
    DistillSettings,
    distill_together,
    group_key,
    refinement_job,
)
from distil_rank.lowrank import (
    DEFAULT_DAMPING,
    compress_data_aware,
    compress_svd,
    compress_svd_bias,
    data_aware_error_curve,
    explained_variance_curve,
    flop_ratio,
    full_svd,
    num_parameters,
    output_spectrum,
    output_weight_roots,
    seeded_linear,
    smallest_rank_reaching,
)
from distil_rank.metrics import explained_variance, fidelity, fit_ridge, spearman
from distil_rank.moments import InputMoments, input_moments, output_weight
from distil_rank.runtime import stage_seed


@dataclass
class BenchmarkData:
    """The rows a teacher is compressed and judged on (all on the CPU)."""

    train: torch.Tensor  # all training embeddings
    fit: torch.Tensor  # training rows distil_da learns from
    selection: torch.Tensor  # training rows held out to pick distil_da's checkpoint
    val: torch.Tensor  # validation embeddings: every reported fidelity figure
    train_fitness: torch.Tensor | None = None  # measured labels, when both splits have them
    val_fitness: torch.Tensor | None = None
    fit_fitness: torch.Tensor | None = None
    selection_fitness: torch.Tensor | None = None


class FitMemo:
    """Decompositions that several fits of one seed share, each computed once: a teacher
    weight's SVD (the svd compressor and the published recipe's warm start, at every rank), a
    split's input moments (every data-aware fit on it), and a teacher's output spectrum on a
    split (data_aware and distil_da's warm start, at every rank). A fit that reuses one is
    charged the seconds it took to compute (`_timed`), so every fit_seconds stays what that fit
    alone costs. Keys are the identities of the objects a value was computed from, which are
    kept alive."""

    def __init__(self):
        self._values: dict[tuple, tuple] = {}
        self.charged_seconds = 0.0  # compute time of the values reused so far

    def get(self, what: str, sources: tuple, compute):
        key = (what, *map(id, sources))
        if key in self._values:
            value, seconds, _ = self._values[key]
            self.charged_seconds += seconds
            return value
        start = time.perf_counter()
        value = compute()
        self._values[key] = (value, time.perf_counter() - start, sources)
        return value

    def svd(self, weight: torch.Tensor):
        return self.get("svd", (weight,), lambda: full_svd(weight))

    def moments(self, rows: torch.Tensor) -> InputMoments:
        return self.get("moments", (rows,), lambda: input_moments(rows))

    def spectrum(self, weight: torch.Tensor, moments: InputMoments):
        """The unweighted output spectrum of `weight` on `moments` (every rank's data_aware)."""
        return self.get("spectrum", (weight, moments), lambda: output_spectrum(weight, moments))


@dataclass(frozen=True)
class FitContext:
    """What a compressor may use besides the teacher and the rank."""

    data: BenchmarkData
    distill: DistillSettings
    device: torch.device  # where distillation runs
    seed: int  # from stage_seed; a compressor derives its own draws from it
    name: str = ""  # the teacher's, for progress bars
    readout: nn.Module | None = None  # the frozen rest of the head, for a head's first layer
    damping: float = DEFAULT_DAMPING  # task_aware: G + damping * tr(G) / out * I
    probes: int = 4  # task_aware: Hutchinson probes per row for a readout with vector output
    memo: FitMemo = field(default_factory=FitMemo)  # shared by the contexts of one seed


@dataclass
class Student:
    """A compressor's output. A distilled student is fitted in two phases: its warm start and a
    pending `job` here, then its distillation, trained with every other pending job at once
    (`train_students`), which sets `module` and `run`."""

    module: nn.Module | None  # on the CPU; None while its distillation is pending
    fit_seconds: float  # the warm start's, plus its share of its training group's wall time
    details: dict = field(default_factory=dict)  # JSON-ready facts about the fit
    warm_start: nn.Module | None = None  # the closed form a distillation started from
    run: DistillResult | None = None  # the distillation, when there was one
    job: DistillJob | None = None  # the distillation still to run

    def finish(self, run: DistillResult) -> None:
        self.module, self.run, self.job = run.student.cpu(), run, None
        self.fit_seconds += run.fit_seconds
        if run.checkpoints:
            self.details.update(selection_mse_warm_start=run.checkpoints[0][1],
                                selection_mse_chosen=min(m for _, m in run.checkpoints))


def train_students(students, device: torch.device, desc: str = "distil",
                   time_alone=()) -> None:
    """Every pending distillation among `students`, trained together (distill_together).

    A student's fit_seconds then holds its share of its group's wall time, which is not what
    its distillation costs on its own. `time_alone`: the students among them whose record
    reports that cost. For every group (students that share a stacked step: distill.group_key)
    holding one, its first such student is trained once more on its own, timed, and its
    seconds are given to them as `distill_alone_seconds`: what one such distillation costs
    when nothing shares its steps. Groups that hold none (the rank sweep's other ranks, whose
    records keep no timing) are not timed."""
    pending = [s for s in students if s.job is not None]
    jobs = [s.job for s in pending]
    for student, run in zip(pending, distill_together(jobs, device, desc=desc)):
        student.finish(run)
    timed = {id(s) for s in time_alone}
    groups: dict[tuple, list[int]] = {}
    for i, job in enumerate(jobs):
        if id(pending[i]) in timed:
            groups.setdefault(group_key(job), []).append(i)
    for members in groups.values():
        start = time.perf_counter()
        distill_together([jobs[members[0]]], device, desc=desc)
        alone = time.perf_counter() - start
        for i in members:
            pending[i].details["distill_alone_seconds"] = alone


def _timed(fn, memo: FitMemo):
    """fn()'s value and seconds: its wall time plus the compute time of what it reused."""
    charged, start = memo.charged_seconds, time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start + memo.charged_seconds - charged


def fit_svd(teacher: nn.Linear, rank: int, context: FitContext) -> Student:
    """Truncated SVD of W (Eckart-Young), bias unchanged. Data-free."""
    memo = context.memo
    return Student(*_timed(lambda: compress_svd(teacher, rank, memo.svd(teacher.weight)), memo))


def fit_svd_bias(teacher: nn.Linear, rank: int, context: FitContext) -> Student:
    """Truncated SVD of W with the truncation's shift of the training mean folded into the
    bias, b + (W - W_r) mu: SVD's factors, and of the data only its mean."""
    memo = context.memo
    return Student(*_timed(lambda: compress_svd_bias(
        teacher, rank, memo.moments(context.data.train).mean, memo.svd(teacher.weight)), memo))


def _data_aware(teacher: nn.Linear, rows: torch.Tensor, rank: int, memo: FitMemo):
    moments = memo.moments(rows)
    return compress_data_aware(teacher, moments, rank,
                               spectrum=memo.spectrum(teacher.weight, moments))


def fit_data_aware(teacher: nn.Linear, rank: int, context: FitContext) -> Student:
    """The closed-form minimiser of the mean squared output error over the training rows."""
    memo = context.memo
    return Student(*_timed(lambda: _data_aware(teacher, context.data.train, rank, memo), memo))


def fit_distil(teacher: nn.Linear, rank: int, context: FitContext) -> Student:
    """The published recipe, the reference row: SVD warm start, every training row, the weights
    after the last step (no held-out rows, so no early stop: all `steps` run)."""
    memo = context.memo
    start, start_seconds = _timed(
        lambda: compress_svd(teacher, rank, memo.svd(teacher.weight)), memo)
    job = DistillJob(teacher, start, context.data.train, context.distill, context.seed)
    return Student(None, start_seconds, job=job)


def fit_distil_da(teacher: nn.Linear, rank: int, context: FitContext) -> Student:
    """The project's student: the closed form fitted on the fit rows, distilled on them, and the
    checkpoint (step 0 included) with the least MSE on the held-out selection rows; it stops
    `patience` steps after its last improvement there."""
    data, memo = context.data, context.memo
    start, start_seconds = _timed(lambda: _data_aware(teacher, data.fit, rank, memo), memo)
    job = refinement_job(teacher, start, data.fit, data.selection,
                         seed=stage_seed(context.seed, "distil_da"), settings=context.distill)
    return Student(None, start_seconds, warm_start=start, job=job)


def _task_aware(teacher: nn.Linear, rows: torch.Tensor, rank: int, context: FitContext):
    """The closed form weighted by G = E[J^T J] of the readout at the layer's outputs."""
    moments, seed = context.memo.moments(rows), stage_seed(context.seed, "probes")

    def weighting():  # G, its damped roots and the G-weighted output spectrum: no rank in them
        with torch.no_grad():
            hidden = teacher(rows)
        weight = output_weight(context.readout, hidden, probes=context.probes, seed=seed)
        roots = output_weight_roots(weight, context.damping)
        return weight, roots, output_spectrum(teacher.weight, moments, roots[0])

    with torch.no_grad():  # a readout with one output per row has an exact G, seed-free: the
        exact = context.readout(teacher(rows[:1])).numel() == 1  # same at every swept rank
    what = f"task weighting, damping {context.damping}" + ("" if exact else f", seed {seed}")
    weight, roots, spectrum = context.memo.get(what, (teacher, context.readout, rows), weighting)
    return compress_data_aware(teacher, moments, rank, weight, context.damping,
                               spectrum=spectrum, roots=roots)


def fit_task_aware(teacher: nn.Linear, rank: int, context: FitContext) -> Student:
    """The closed form that knows what the rest of the head reads, on the training rows."""
    return Student(*_timed(lambda: _task_aware(teacher, context.data.train, rank, context),
                           context.memo))


def fit_distil_task(teacher: nn.Linear, rank: int, context: FitContext) -> Student:
    """End-to-end distillation through the frozen rest of the head (MSE to the teacher head's
    output), from task_aware fitted on the fit rows, keeping the checkpoint with the least
    held-out head-output MSE (step 0 included), with the same early stop as distil_da."""
    data = context.data
    start, start_seconds = _timed(lambda: _task_aware(teacher, data.fit, rank, context),
                                  context.memo)
    job = DistillJob(teacher, start, data.fit, replace(context.distill, alpha=0.0),
                     stage_seed(context.seed, "distil_task"), holdout_x=data.selection,
                     readout=context.readout)
    return Student(None, start_seconds, warm_start=start, job=job)


@dataclass(frozen=True)
class Compressor:
    """A registry entry: the fit, and how the tables and figures name and draw it."""

    fit: Callable[[nn.Linear, int, FitContext], Student]
    label: str | None = None  # the docs' tables and the figures' legends; the key where None
    colour: str | None = None  # a matplotlib colour; where None, a spare one (method_colours)
    hollow: bool = False  # drawn as hollow squares: a closed form, which the curve of a student
    # started from it may cover (method_marker)

    def __call__(self, teacher: nn.Linear, rank: int, context: FitContext) -> Student:
        return self.fit(teacher, rank, context)


COMPRESSORS = {
    "svd": Compressor(fit_svd, "svd (data-free)", "tab:gray"),
    "svd_bias": Compressor(fit_svd_bias, "svd_bias (svd, mean shift in the bias)", "tab:brown"),
    "data_aware": Compressor(fit_data_aware, "data_aware (closed form)", "tab:purple", True),
    "distil": Compressor(fit_distil, "distil (published recipe)", "tab:orange"),
    "distil_da": Compressor(fit_distil_da, "distil_da (student)", "tab:cyan"),
}
HEAD_COMPRESSORS = {
    "task_aware": Compressor(fit_task_aware, "task_aware (closed form, head-weighted)",
                             "tab:olive", True),
    "distil_task": Compressor(fit_distil_task, "distil_task (head's student)", "tab:pink"),
}
SWEEP_METHODS = ("svd", "svd_bias", "data_aware", "distil_da")
HEAD_SWEEP_METHODS = SWEEP_METHODS + ("task_aware",)  # distil_task: at the target rank only
STUDENT = "distil_da"  # a linear teacher's student: its numbers fill the published keys
HEAD_STUDENT = "distil_task"  # a head's student


def method_label(method: str) -> str:
    """A method's name in the docs' tables and the figures' legends: its entry's label, else
    the key (a bare function, or a method of the position splits' own)."""
    return getattr({**COMPRESSORS, **HEAD_COMPRESSORS}.get(method), "label", None) or method


# colours for methods without one of their own: none of them a registered method's
SPARE_COLOURS = ("tab:blue", "tab:green", "tab:red", "gold", "darkslateblue", "lime", "teal",
                 "salmon")


def method_colours(methods) -> dict[str, str]:
    """The colour of each of `methods` in one figure: its registry entry's, and for the others
    (a bare function, a method of the position splits' own) the spare colours in turn, skipping
    any a registered method of the figure has."""
    registry = {**COMPRESSORS, **HEAD_COMPRESSORS}
    colours = {m: getattr(registry.get(m), "colour", None) for m in methods}
    spare = [c for c in SPARE_COLOURS if c not in colours.values()] or list(SPARE_COLOURS)
    unset = [m for m, colour in colours.items() if not colour]
    return colours | {m: spare[i % len(spare)] for i, m in enumerate(unset)}


def is_hollow(method: str) -> bool:
    """Whether a method's registry entry is drawn hollow (a closed form)."""
    return getattr({**COMPRESSORS, **HEAD_COMPRESSORS}.get(method), "hollow", False)


def method_marker(method: str, size: float = 4) -> dict:
    """A method's markers in a figure's curves (matplotlib keywords): for an entry drawn
    hollow, hollow squares twice the `size` of the others' dots."""
    return dict(marker="s", ms=2 * size, mfc="none") if is_hollow(method) else \
        dict(marker="o", ms=size)


def compressors_for(readout: nn.Module | None) -> dict:
    """The registry entries that apply: a head's compressors only where there is a head."""
    return COMPRESSORS if readout is None else {**COMPRESSORS, **HEAD_COMPRESSORS}


def compress_teacher(teacher: nn.Linear, rank: int, context: FitContext, methods=None, *,
                     train: bool = True) -> dict[str, Student]:
    """Every compressor that applies (or those named) applied to `teacher`; with train=False
    the distillations stay pending for one batched `train_students` over many teachers."""
    registry = compressors_for(context.readout)
    students = {method: registry[method](teacher, rank, context)
                for method in (registry if methods is None else methods)}
    if train:
        train_students(students.values(), context.device, f"{context.name} r={rank}")
    return students


def warm_up(dim: int, device: torch.device) -> None:
    """Pay the linear-algebra and optimiser libraries' one-time start-up before any fit is
    timed, so the first compressor timed in a process is not charged for it. On a layer at
    most 64 wide: start-up does not grow with the size, and at the published preset's 1280 the
    warm-up's own fits took about 8 s."""
    dim = min(dim, 64)
    g = torch.Generator().manual_seed(0)
    layer = seeded_linear(dim, dim, g)
    x = torch.randn(max(2 * dim, 64), dim, generator=g)
    data = BenchmarkData(train=x, fit=x, selection=x[:8], val=x[:8])
    settings = DistillSettings(steps=2, lr=1e-3, batch_size=8, alpha=0.1, weight_decay=0.0,
                               eval_every=1)
    readout = nn.Sequential(nn.GELU(), seeded_linear(dim, 1, g)).requires_grad_(False)
    context = FitContext(data, settings, device, seed=0, readout=readout)
    compress_teacher(layer, max(1, dim // 20), context)


# ----------------------------------------------------------------------------- one seed's entry


@torch.no_grad()
def teacher_entry(teacher: nn.Linear, students: dict[str, Student], data: BenchmarkData,
                  rank: int, latency: LatencySettings, device: torch.device, ridge_alpha: float,
                  *, readout: nn.Module | None = None, sweep: dict | None = None,
                  denoising_loss: list[float] | None = None,
                  head_training: dict | None = None) -> TeacherEntry:
    """A teacher's results for one seed: fidelity on validation, the downstream probe, sizes,
    latency, distillation, sweep; for a head, also the head's output and the task."""
    y_val = teacher(data.val)
    head_val = None if readout is None else readout(y_val).reshape(len(y_val), -1)
    probe = None
    if data.train_fitness is not None and data.val_fitness is not None:
        probe = fit_ridge(teacher(data.train), data.train_fitness, ridge_alpha)

    methods, distillation = {}, {}
    for method, student in students.items():
        y_hat = student.module(data.val)
        scores = method_scores({**fidelity(y_val, y_hat), "fit_seconds": student.fit_seconds,
                          "params": num_parameters(student.module),
                          "rank": getattr(student.module, "rank", rank),  # what it is
                          **student.details})
        if probe is not None:
            scores.spearman = spearman(probe(y_hat), data.val_fitness)
        if student.warm_start is not None:
            scores.warm_start_val = fidelity(y_val, student.warm_start(data.val))
        if readout is not None:
            scores.head_explained_variance, scores.task_spearman = _task_scores(
                readout, head_val, y_hat, data.val_fitness).values()
        methods[method] = scores
        if student.run is not None:
            run = student.run
            distillation[method] = DistillRecord(run.losses[-1], run.chosen_step, run.checkpoints,
                                                 run.steps_run)

    best = STUDENT if readout is None else HEAD_STUDENT
    timed = dict(zip(("teacher", "student"), measure_latencies(  # interleaved: the same load
        [teacher, students[best].module], latency.batch, teacher.in_features, device,
        warmup=latency.warmup, repeats=latency.repeats)))
    return TeacherEntry(
        best, methods, distillation, timed, num_parameters(teacher),
        flop_ratio(teacher.in_features, teacher.out_features, rank),
        teacher_spearman=None if probe is None else spearman(probe(y_val), data.val_fitness),
        teacher_task_spearman=None if readout is None else spearman(head_val[:, 0],
                                                                    data.val_fitness),
        sweep=sweep, head_training=head_training,
        task_trained_denoising_loss=None if denoising_loss is None else
        {"first": denoising_loss[0], "last": denoising_loss[-1]})


def _task_scores(readout: nn.Module, head_val: torch.Tensor, layer_out: torch.Tensor,
                 fitness: torch.Tensor) -> dict:
    """The compressed head against the teacher head (explained variance of its output) and
    against the measured fitness (Spearman's rho of its prediction)."""
    predicted = readout(layer_out).reshape(len(layer_out), -1)
    return {"head_explained_variance": explained_variance(head_val, predicted),
            "task_spearman": spearman(predicted[:, 0], fitness)}


# ----------------------------------------------------------------------------- rank sweep


def sweep_ranks(dim: int, divisors=(80, 40, 20, 10, 5, 4)) -> list[int]:
    """Ranks from heavy to light compression: D/80 .. D/4, D/20 included."""
    return sorted({max(1, dim // d) for d in divisors if max(1, dim // d) < dim})


def fit_ranks(teacher: nn.Linear, ranks: list[int], context: FitContext,
              fitted_at_rank: dict[int, dict[str, Student]] | None = None, *,
              train: bool = True) -> dict[int, dict[str, Student]]:
    """The swept compressors at every rank; `fitted_at_rank` maps a rank to students already
    fitted there (the main run's), which are reused, not refitted."""
    swept = SWEEP_METHODS if context.readout is None else HEAD_SWEEP_METHODS
    built = dict(fitted_at_rank or {})
    for rank in ranks:
        if rank not in built:
            built[rank] = compress_teacher(
                teacher, rank, replace(context, seed=stage_seed(context.seed, f"rank/{rank}")),
                swept, train=train)
    return built


@torch.no_grad()
def sweep_teacher(teacher: nn.Linear, ranks: list[int], context: FitContext,
                  built: dict[int, dict[str, Student]] | None = None) -> dict:
    """svd, data_aware and distil_da at every rank, on validation; and the exact closed-form
    curve for every rank 0..D from one eigendecomposition.

    The curve is the explained variance on the training rows, where the closed form is exactly
    optimal: `data_aware_train_explained_variance` measures the fitted students on those rows,
    and the two must agree to rounding (`closed_form_max_abs_gap`). `built`: the students of
    `fit_ranks`, trained (fitted here when None).
    """
    data, readout = context.data, context.readout
    if built is None:
        with torch.enable_grad():
            built = fit_ranks(teacher, ranks, context)
    moments = context.memo.moments(data.train)
    curve = explained_variance_curve(data_aware_error_curve(
        teacher.weight, moments, spectrum=context.memo.spectrum(teacher.weight, moments)))
    y_val, y_train = teacher(data.val), teacher(data.train)
    swept = SWEEP_METHODS if readout is None else HEAD_SWEEP_METHODS
    keys = ("explained_variance", "cosine", "rel_mse") + (
        () if readout is None else ("head_explained_variance", "task_spearman"))
    methods = {m: {key: [] for key in keys} for m in swept}
    head_val = None if readout is None else readout(y_val).reshape(len(y_val), -1)
    train_measured = []
    for rank in ranks:
        for method in swept:
            y_hat = built[rank][method].module(data.val)
            scores = fidelity(y_val, y_hat)
            if readout is not None:
                scores.update(_task_scores(readout, head_val, y_hat, data.val_fitness))
            for key in methods[method]:
                methods[method][key].append(scores[key])
        train_measured.append(explained_variance(  # fidelity's figure, and only it
            y_train, built[rank]["data_aware"].module(data.train)))
    dim_in, dim_out = teacher.in_features, teacher.out_features
    return {
        "ranks": list(ranks),
        "compression": [flop_ratio(dim_in, dim_out, r) for r in ranks],
        "methods": methods,
        "closed_form_train_explained_variance": curve,
        "data_aware_train_explained_variance": train_measured,
        "closed_form_max_abs_gap": max(abs(m - curve[r]) for m, r in zip(train_measured, ranks)),
        "smallest_rank_for_train_explained_variance": smallest_rank_reaching(curve),
    }
