"""Typed results: a method's scores and a teacher's entry, built once per seed, combined over
seeds, and turned into the JSON layout of reference/distil_rank_summary.schema.json in one place.

Every key of the JSON is declared here once, with its description as the docstring under it
(the dataclasses below, and the typed dicts of what other modules build): benchmark/schema.py
generates reference/distil_rank_summary.schema.json from this module.

The derived figures that people cite (speedup, compression, cosine improvement, MSE reduction)
are computed only in `TeacherEntry.derived`, from the entry's own scores: for one seed from that
seed's, and over seeds from the combined ones (means; timings: medians), so a derived figure can
never contradict the figures shown beside it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, NotRequired, TypedDict

from distil_rank.benchmark.stats import MEDIAN, PER_SEED, aggregate

# ----------------------------------------------------------------------------- the JSON's records
# The shapes of the dicts that other modules build (latency, data, sweep, environment), declared
# here so that benchmark/schema.py can generate the summary's JSON schema from this module: each
# key described once, by the docstring under it.


class Timing(TypedDict):
    """Latency of one module (latency.measure_latency)."""

    median_ms: float
    """Median milliseconds per forward pass."""
    p25_ms: float
    """25th percentile."""
    p75_ms: float
    """75th percentile."""
    repeats: int
    """Timed calls (warm-up excluded)."""
    batch: int
    """Rows per forward pass."""
    dtype: str
    """Data type of weights and inputs."""
    mode: Literal["eager", "cuda_graph", "fused", "fused_graph"]
    """eager calls, or replay of a captured CUDA graph; the fused modes with LowRankLinear's
    one-kernel forward."""
    device: str
    """The device, by name."""
    threads: int | None
    """CPU threads (null on CUDA)."""
    noisy: NotRequired[bool | list]
    """Whether the interquartile range of the times exceeds 25% of their median
    (timing.NOISY_RELATIVE_IQR): the machine was busy and the figure is not a finding. Over
    seeds: the list of each seed's."""
    calls_per_replay: NotRequired[int]
    """Forward passes per timed call: 1 in eager modes; in graph modes the passes captured in one
    graph, whose replay time is divided by them. Absent from records made before it was kept
    (they captured one pass)."""
    quantised: NotRequired[bool | list]
    """Whether at least 80% of the times sit within a tenth of a scheduler tick (1, 4 or 10 ms) of
    a whole number of ticks, at a median of two ticks or more (latency.quantised): the process
    was timed in the scheduler's slices on a busy machine, and the figure is not a finding. Over
    seeds: the list of each seed's. Absent from runs before it was kept."""


class TeacherLatency(TypedDict):
    """Latency records of teacher and student at the latency batch."""

    teacher: Timing
    """The dense teacher."""
    student: Timing
    """The teacher's student (student_method)."""


class LatencyCell(TypedDict):
    """One cell of the latency matrix."""

    batch: int
    """Rows per forward pass."""
    dtype: str
    """Data type."""
    mode: str
    """eager or cuda_graph (fused and fused_graph on CUDA)."""
    dense: Timing
    """The dense layer's latency."""
    factorised: Timing
    """The rank-r layer's latency."""
    speedup: float
    """dense median / rank-r median."""
    flop_ratio: float
    """The FLOP ratio beside it."""
    noisy: NotRequired[bool]
    """Whether either time of this cell is noisy (see Timing.noisy): its speedup is not a
    finding."""
    memory_bound_ms: NotRequired[float]
    """CUDA: the time to read x and write y once at copy_bandwidth_gb_s, a floor for any layer of
    this shape."""
    fused: NotRequired[dict]
    """Fused modes: what the kernel did at this shape (timing.fused_check): the plan its tuning
    chose, plans_tried (ran and agreed with the two products), plans_rejected (ran and did not:
    dropped, with a warning), fused_ms and two_products_ms as the tuning timed them,
    auto_takes_kernel, and max_relative_error against fp32 two products beside
    two_products_error, the two products' own in this dtype, and within_rounding (the first at
    most twice the second plus 1e-5; bench/latency.py fails otherwise)."""
    untrusted: NotRequired[list[str]]
    """Why the cell cannot be trusted, empty when it can: noisy, quantised (either time), or
    above the FLOP ratio (a speedup above 1.5x it is the clock's, not the layer's). Untrusted
    cells are kept out of the break-even batch and the headline, and drawn hollow. Absent from
    runs before it was kept."""


class LatencyMatrix(TypedDict):
    """Dense against rank-r latency on one device (latency.latency_matrix)."""

    device: str
    """The device, by name."""
    threads: int | None
    """CPU threads (null on CUDA)."""
    dim_in: int
    """Input width."""
    dim_out: int
    """Output width."""
    rank: int
    """Rank of the factorised layer."""
    flop_ratio: float
    """Multiply-adds, dense over factorised."""
    rows: list[LatencyCell]
    """One row per batch, dtype and mode."""
    skipped: list
    """Cells left out, with why (e.g. would not fit in memory)."""
    break_even_batch: dict[str, int | None]
    """Per dtype/mode, the smallest batch from which rank-r is faster at every larger batch
    measured; null if never."""
    copy_bandwidth_gb_s: NotRequired[float | None]
    """CUDA: the bandwidth a 1 GiB device copy sees (bytes read plus written per second, in
    GB/s), the ceiling behind memory_bound_ms; null on the CPU."""
    graph_calls_per_replay: NotRequired[int | None]
    """Forward passes captured per CUDA graph in the graph modes; null when no graph mode was
    measured."""
    split_k_plans: NotRequired[bool | None]
    """bench/latency.py on CUDA: whether the fused kernel's tuning could also try its opt-in
    split-K plans (--split-k); null elsewhere."""


class TrainSplit(TypedDict):
    """The training split."""

    source: str
    """File or 'synthetic'."""
    rows: int
    """Rows."""
    selection_fraction: float
    """Share of training rows held out to choose distil_da's checkpoint."""


class ValidationSplit(TypedDict):
    """The validation split: every fidelity figure."""

    source: str
    """File or 'synthetic'."""
    rows: int
    """Rows."""
    rows_also_in_train: NotRequired[int]
    """Validation rows that are also, bit for bit, training rows (their figures are not held
    out; the run warns). Absent from runs before it was counted."""


class EffectiveRank(TypedDict):
    """The embeddings' own effective rank."""

    participation_ratio: float
    """(sum l)^2 / sum l^2 of the covariance eigenvalues."""
    components_for_90pct: int
    """Principal components holding 90% of the variance."""
    components_for_95pct: int
    """... 95% ..."""
    components_for_99pct: int
    """... 99% ..."""


class DataSummary(TypedDict):
    """The data and its shape."""

    train: TrainSplit
    """The training split."""
    val: ValidationSplit
    """The validation split: every fidelity figure."""
    has_fitness: bool
    """Both splits carry fitness labels (the downstream probe runs)."""
    provenance: dict
    """The training file's provenance dict, as stored in it."""
    embedding_mean_norm: float
    """Norm of the training embeddings' common mean."""
    embedding_spread_rms_norm: float
    """Root-mean-square distance of a training embedding from that mean."""
    effective_rank: EffectiveRank
    """The embeddings' own effective rank."""


class Environment(TypedDict, total=False):
    """torch and Python versions, platform, device and thread count (latency.environment); a
    CUDA run adds its device's facts."""

    torch: Any
    """torch version."""
    python: Any
    """Python version."""
    platform: Any
    """Operating system and machine."""
    device: Any
    """The run's device (cpu, cuda, cuda:N)."""
    device_name: Any
    """That device by name."""
    cpu: Any
    """CPU model."""
    cpu_count: Any
    """Logical CPUs."""
    torch_threads: Any
    """Threads torch uses on the CPU."""
    cuda: Any
    """CUDA version, null without CUDA."""
    run_seconds: float
    """Wall time of the whole run, from the start to the summary (the figure's rendering
    excluded), seconds."""
    threads: dict
    """How many CPU threads the run gave PyTorch, and why (runtime.choose_threads): threads,
    cores, other_runnable (tasks besides the run at its start; null where unknown), reason."""
    load: dict
    """The machine's load at the start and the end of the run: load_average_1_5_15_min and
    other_runnable (runnable tasks besides the run; null where unknown)."""


class HeadTraining(TypedDict, total=False):
    """Fitness-Head only: how its training ended."""

    chosen_step: int | list
    """Step of the checkpoint kept (over seeds: each seed's)."""
    selection_mse: float
    """Its MSE on the selection rows, standardised fitness."""


class DenoisingLoss(TypedDict, total=False):
    """First and last loss of the Task-Trained teacher's denoising training."""

    first: float
    """Loss at the first step."""
    last: float
    """Loss at the last step."""


class SweepCurve(TypedDict):
    """One method's curve in the rank sweep (head_explained_variance and task_spearman for heads
    only)."""

    explained_variance: list[float | None]
    """explained_variance on validation at each rank."""
    cosine: list[float | None]
    """cosine on validation at each rank."""
    rel_mse: list[float | None]
    """rel_mse on validation at each rank."""
    head_explained_variance: NotRequired[list[float | None]]
    """head_explained_variance on validation at each rank."""
    task_spearman: NotRequired[list[float | None]]
    """task_spearman on validation at each rank."""


class Sweep(TypedDict):
    """The rank sweep of one teacher."""

    ranks: list[int]
    """Ranks swept, D/80 .. D/4."""
    compression: list[float]
    """Dense weights over the factors' weights at each rank, biases aside (= the FLOP ratio)."""
    methods: dict[str, SweepCurve]
    """Per swept method, validation figures at each rank."""
    closed_form_train_explained_variance: list[float]
    """Exact optimum of the explained variance on the training rows at every rank 0..D, from one
    eigendecomposition."""
    data_aware_train_explained_variance: list[float]
    """The fitted data_aware students, measured on the training rows at each swept rank."""
    closed_form_max_abs_gap: float
    """Largest gap between those two: rounding only."""
    smallest_rank_for_train_explained_variance: dict[str, float | None]
    """Smallest rank whose closed form reaches each target explained variance (0.95, 0.99,
    0.999) on the training rows; null when none does."""


class Published(TypedDict):
    """A teacher's published keys (TeacherEntry.derived), computed from its own scores."""

    svd_cosine: float
    """Published key: mean cosine of the data-free SVD."""
    svd_rel_mse: float
    """Published key: rel_mse of the SVD."""
    student_cosine: float
    """Published key: mean cosine of the teacher's student (student_method)."""
    student_rel_mse: float
    """Published key: rel_mse of the student."""
    cosine_improvement: float
    """Published key: student_cosine - svd_cosine."""
    mse_reduction: float
    """Published key: (svd_rel_mse - student_rel_mse) / svd_rel_mse (mean over seeds of the
    per-seed value)."""
    latency_teacher_ms: float
    """Published key: median ms of the dense teacher at the latency batch (median over seeds)."""
    latency_student_ms: float
    """Published key: median ms of the student (median over seeds)."""
    speedup: float
    """Published key: latency_teacher_ms / latency_student_ms, the ratio of the two times
    shown."""
    params_teacher: int
    """Published key: parameters of the dense layer."""
    params_student: int
    """Published key: parameters of the student."""
    compression: float
    """Published key: params_teacher / params_student."""
    svd_explained_variance: float | None
    """Explained variance of the svd method on validation (the published baseline; svd_bias
    under methods removes its mean offset)."""
    student_explained_variance: float | None
    """Explained variance on validation of this teacher's own student, named by student_method
    (distil_da for a linear teacher, distil_task for a head): the README table's student column
    shows this figure with that name."""
    flop_ratio: float
    """Multiply-adds of the dense layer over the factorised one."""


class OverSeeds(TypedDict):
    """What summarise_seeds adds to a teacher's entry combined over seeds."""

    std: dict
    """Sample standard deviation over seeds of every number of the entry, in the same layout (0
    for one seed); non-numbers are absent."""
    per_seed: list[TeacherEntry]
    """Each seed's entry, in seed order."""


# A field with a default that to_json writes all the same (null or empty): required in the schema.
ALWAYS_WRITTEN = {"always_written": True}


def combined_by(rule: str) -> dict:
    """A field's declared rule for combining it over seeds (stats.aggregate); the default is
    the mean."""
    return {"combine": rule}


def _present(record) -> dict:
    """A record as JSON-ready data, its absent (None) optional fields left out."""
    return {k: v for k, v in asdict(record).items() if v is not None}


def method_scores(values: dict) -> MethodScores:
    """MethodScores from named figures; a compressor's own facts (Student.details) that are not
    fields go to `extra` and come back out at the same level of the JSON."""
    known = {f.name for f in fields(MethodScores)}
    return MethodScores(**{k: v for k, v in values.items() if k in known},
                        extra={k: v for k, v in values.items() if k not in known})


@dataclass
class MethodScores:
    """One compressor's results at the target rank, on the validation rows, then the fit (for
    distil_task the selection MSEs are of the head's output). A registered compressor's own facts
    (Student.details) sit beside these keys."""

    cosine: float
    """Mean over validation rows of the cosine between the teacher's and the compressed layer's
    outputs (the published metric; flattered by a common mean)."""
    cosine_p1: float
    """1st percentile of that per-row cosine."""
    cosine_min: float
    """Smallest per-row cosine."""
    rel_mse: float
    """mean((y - y_hat)^2) / mean(y^2) on validation: the published relative MSE, against the raw
    output."""
    explained_variance: float | None
    """1 - sum||y - y_hat||^2 / sum||y - mean(y)||^2 on validation: 1 is the teacher, 0
    predicting its mean output, negative worse than that. The headline. null when the teacher's
    output does not vary."""
    fit_seconds: float = field(metadata=combined_by(MEDIAN))
    """Wall time of the fit (median over seeds): a closed form's own; for a distilled student
    its warm start's plus its share of its training group's wall time (students trained together
    in one stacked step), not what its distillation costs alone (distill_alone_seconds)."""
    params: int
    """Parameters of the compressed layer, bias included."""
    rank: int
    """Rank of the factorisation."""
    spearman: float | None = None
    """Probe Spearman: rho on validation between measured fitness and the teacher's ridge probe
    (teacher_spearman's) reading this method's output (only where the data has fitness). Not the
    head's own prediction: that is task_spearman."""
    warm_start_val: dict[str, float | None] | None = None
    """metrics.fidelity's figures (the keys above) for the closed form this distillation started
    from (distillation from a closed form only)."""
    head_explained_variance: float | None = None
    """Heads only: explained variance of the compressed head's output against the teacher
    head's, on validation."""
    task_spearman: float | None = None
    """Task Spearman, heads only: rho on validation between the compressed head's own prediction
    and the measured fitness (compare teacher_task_spearman)."""
    selection_mse_warm_start: float | None = None
    """MSE of the warm start on the selection rows (training rows held out from the fit)."""
    selection_mse_chosen: float | None = None
    """MSE of the kept checkpoint on the selection rows: never above the warm start's."""
    distill_alone_seconds: float | None = field(default=None, metadata=combined_by(MEDIAN))
    """A distilled student only: the seconds that one distillation of its group (same shape,
    settings and steps) took trained on its own, timed once per group after the batched training
    (median over seeds); fit_seconds holds its share of the group's batched wall time. Absent
    from runs before it was kept."""
    extra: dict = field(default_factory=dict)
    """A registered compressor's own facts: written beside the fields above, not under a key."""

    def as_json(self) -> dict:
        values = _present(self)
        extra = values.pop("extra")
        return {**values, **extra}


@dataclass
class DistillRecord:
    """One distillation run."""

    final_loss: float
    """Training loss at the last step run."""
    chosen_step: int | list | None = field(metadata=combined_by(PER_SEED))
    """Step whose weights were kept (0: the warm start; null: the last step, no held-out
    choice). Over seeds: the list of each seed's."""
    selection_checkpoints: list = field(metadata=combined_by(PER_SEED))
    """[step, held-out MSE] at every evaluation (empty without held-out rows). Over seeds: the
    list of each seed's list."""
    steps_run: int | list | None = field(default=None, metadata=combined_by(PER_SEED))
    """Optimiser steps this student took before its run ended or stopped early (patience without
    a held-out improvement). Over seeds: the list of each seed's. Absent from older runs."""


@dataclass
class TeacherEntry:
    """A teacher's results: one seed's, or (from_json of the combined tree) over seeds, where
    numbers are the mean over seeds (timings: the median) and per-seed facts (chosen_step,
    selection_checkpoints) are lists by seed. Its JSON holds these fields and its published keys
    (derived)."""

    student_method: str
    """The method whose numbers fill this teacher's published student_* keys: distil_da for a
    linear teacher, distil_task for a head."""
    methods: dict[str, MethodScores]
    """Every compressor's results, by method name."""
    distillation: dict[str, DistillRecord]
    """Every distillation run, by method name."""
    latency: TeacherLatency
    """Latency records of teacher and student at the latency batch."""
    params_teacher: int
    """Parameters of the dense layer."""
    flop_ratio: float
    """Multiply-adds of the dense layer over the factorised one."""
    teacher_spearman: float | None = None
    """Probe Spearman: rho on validation of a ridge probe fitted on the teacher's output to the
    measured fitness, reading the teacher's output (only with fitness labels). Compare with
    methods[].spearman; not a head's own prediction (teacher_task_spearman)."""
    teacher_task_spearman: float | None = None
    """Task Spearman, heads only: rho on validation between the teacher head's own prediction
    and the measured fitness."""
    sweep: Sweep | None = None
    """The rank sweep of this teacher (absent with --no-sweep)."""
    task_trained_denoising_loss: DenoisingLoss | None = field(default=None,
                                                              metadata=ALWAYS_WRITTEN)
    """The Task-Trained teacher's denoising training (null for other teachers)."""
    head_training: HeadTraining | None = field(default=None, metadata=ALWAYS_WRITTEN)
    """Fitness-Head only: how its training ended (null for other teachers)."""

    @property
    def is_head(self) -> bool:
        """Whether this teacher is a head's first layer, judged by its task. Its head_training
        says so, not its task Spearman, which is null where the fitness does not vary."""
        return self.head_training is not None

    def derived(self) -> Published:
        """The published keys, and what they leave out, from this entry's own scores."""
        svd, best = self.methods["svd"], self.methods[self.student_method]
        dense_ms = self.latency["teacher"]["median_ms"]
        rank_ms = self.latency["student"]["median_ms"]
        return {
            "svd_cosine": svd.cosine,
            "svd_rel_mse": svd.rel_mse,
            "student_cosine": best.cosine,
            "student_rel_mse": best.rel_mse,
            "cosine_improvement": best.cosine - svd.cosine,
            "mse_reduction": (svd.rel_mse - best.rel_mse) / svd.rel_mse if svd.rel_mse > 0
            else 0.0,
            "latency_teacher_ms": dense_ms,
            "latency_student_ms": rank_ms,
            "speedup": dense_ms / rank_ms,
            "params_teacher": self.params_teacher,
            "params_student": best.params,
            "compression": self.params_teacher / best.params,
            "svd_explained_variance": svd.explained_variance,
            "student_explained_variance": best.explained_variance,
            "flop_ratio": self.flop_ratio,
        }

    def to_json(self, derived: bool = True) -> dict:
        out = {"student_method": self.student_method, **(self.derived() if derived else {
            "params_teacher": self.params_teacher, "flop_ratio": self.flop_ratio})}
        out.update(latency=self.latency,
                   methods={m: s.as_json() for m, s in self.methods.items()},
                   distillation={m: asdict(r) for m, r in self.distillation.items()},
                   task_trained_denoising_loss=self.task_trained_denoising_loss,
                   head_training=self.head_training)
        for key in ("teacher_spearman", "teacher_task_spearman", "sweep"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    @classmethod
    def from_json(cls, tree: dict) -> TeacherEntry:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in tree.items() if k in known}
        values["methods"] = {m: method_scores(s) for m, s in tree["methods"].items()}
        values["distillation"] = {m: DistillRecord(**r) for m, r in tree["distillation"].items()}
        return cls(**values)


# How each figure is combined over seeds: the rules the records' fields declare, and those of
# the timing dict (latency.measure_latency) that each entry's `latency` holds.
TIMING_RULES = {"median_ms": MEDIAN, "p25_ms": MEDIAN, "p75_ms": MEDIAN, "noisy": PER_SEED}
COMBINE = {f.name: f.metadata["combine"] for record in (MethodScores, DistillRecord)
           for f in fields(record) if "combine" in f.metadata} | TIMING_RULES


def summarise_seeds(entries: list[TeacherEntry]) -> dict:
    """A teacher's JSON over seeds: the combined entry (means; timings: medians) with its derived
    figures computed from the combined scores, `std` of every figure over seeds (derived ones
    included), and each seed's entry under `per_seed`."""
    mean, _ = aggregate([e.to_json(derived=False) for e in entries], COMBINE)
    per_seed = [e.to_json() for e in entries]
    _, std = aggregate(per_seed, COMBINE)
    return {**TeacherEntry.from_json(mean).to_json(), "std": std, "per_seed": per_seed}


class Results:
    """Read access to teachers' entries, one seed's or combined over seeds (then with `std`): the
    one place where the report, the console and the README generator learn where a figure
    lives. `entries` are typed; `std` walks the spread tree, None where there is none."""

    def __init__(self, teachers: dict):
        self._json = {n: e.to_json() if isinstance(e, TeacherEntry) else e
                      for n, e in teachers.items()}
        self.entries = {n: TeacherEntry.from_json(e) for n, e in self._json.items()}

    def heads(self) -> dict[str, TeacherEntry]:
        """The teachers judged by a task (a head's first layer)."""
        return {n: e for n, e in self.entries.items() if e.is_head}

    def std(self, teacher: str, *path: str):
        node = self._json[teacher].get("std")
        for key in path:
            node = None if node is None else node.get(key)
        return node


@dataclass
class RunSummary:
    """A run's summary, typed: the JSON layout of reference/distil_rank_summary.schema.json,
    built once at the end of the pipeline (`pipeline.summarise_run`) and read back from any
    committed summary with `from_json`. The report, the docs generator and compare_results read
    figures through it (`results()` for the teachers' typed entries)."""

    real_data: bool
    """true for embeddings read from files, false for the synthetic stand-in."""
    data_note: str
    """Where the data came from, in one line."""
    target_rank: int
    """The rank r of every compressed layer (sweep aside)."""
    input_dim: int
    """Embedding width D."""
    teachers: list[str]
    """Teacher display names, in the order they were built, each a top-level key."""
    entries: dict[str, dict]
    """Teacher -> its summarise_seeds JSON: written at the top level, under the teacher's name."""
    methods: list[str]
    """Compressor names, each a key of a teacher's methods."""
    student_method: str
    """The linear teachers' student (distil_da); each teacher names its own under
    student_method."""
    skipped_teachers: dict[str, str]
    """Teachers not built in this run, with why (Fitness-Head without fitness labels)."""
    seeds: list[int]
    """The seed of each repetition."""
    latency_matrix: dict[str, LatencyMatrix]
    """Per device type (cpu, cuda), the run's latency matrix."""
    data: DataSummary
    """The data's sources, sizes, provenance and spectrum."""
    config: dict
    """Every setting of the run (distil_rank/benchmark/config.py's Config, each default
    commented there)."""
    environment: Environment
    """torch and Python versions, platform, device and thread count, plus run_seconds."""
    undefined: dict[str, str] = field(default_factory=dict, metadata=ALWAYS_WRITTEN)
    """Every metric key that is null (undefined) somewhere in this summary, with why; empty when
    every figure is defined."""
    headline: str = ""
    """The run's finding in one or two sentences, generated from the figures of this summary
    (report.headline) and printed last on the console. Absent from runs before it was kept."""

    def results(self) -> Results:
        return Results(self.entries)

    def setting(self, stage: str, name: str):
        """A setting of the run's Config, from either layout of `config`: nested by stage (from
        0.4 on, e.g. config["distill"]["steps"]) or flat, as older summaries keep it
        (config["steps"], config["latency_repeats"])."""
        nested = self.config.get(stage)
        if isinstance(nested, dict):
            return nested[name]
        return self.config.get(f"{stage}_{name}", self.config.get(name))

    def to_json(self) -> dict:
        tree = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "entries"
                and not (f.name == "headline" and not self.headline)}
        names = list(tree)
        at = names.index("seeds") + 1  # teachers' entries sit after the seeds, as they always did
        ordered = {k: tree[k] for k in names[:at]} | self.entries | \
            {k: tree[k] for k in names[at:]}
        return ordered

    @classmethod
    def from_json(cls, tree: dict) -> RunSummary:
        known = {f.name for f in fields(cls)} - {"entries"}
        return cls(entries={name: tree[name] for name in tree["teachers"]},
                   **{k: v for k, v in tree.items() if k in known})
