"""Typed results: a method's scores and a teacher's entry, built once per seed, combined over
seeds, and turned into the JSON layout of reference/distil_rank_summary.schema.json in one place.

The derived figures that people cite (speedup, compression, cosine improvement, MSE reduction)
are computed only in `TeacherEntry.derived`, from the entry's own scores: for one seed from that
seed's, and over seeds from the combined ones (means; timings: medians), so a derived figure can
never contradict the figures shown beside it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from distil_rank.benchmark.stats import MEDIAN, PER_SEED, aggregate


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
    """One compressor on one teacher: fidelity on the validation rows, then the fit."""

    cosine: float  # mean cosine of the compressed layer's output with the teacher's
    cosine_p1: float  # its 1st percentile over rows
    cosine_min: float
    rel_mse: float  # mean squared error / mean squared teacher output
    explained_variance: float  # 1 - SSE / total variance of the teacher's output: the headline
    fit_seconds: float = field(metadata=combined_by(MEDIAN))  # the fit's wall time (a distilled
    # student: its warm start's, plus its share of its training group's wall time)
    params: int
    rank: int
    spearman: float | None = None  # the teacher's fitness probe on this output
    warm_start_val: dict | None = None  # the warm start's fidelity, for a distilled student
    head_explained_variance: float | None = None  # a head: its output against the teacher's
    task_spearman: float | None = None  # a head: its prediction against the measured fitness
    selection_mse_warm_start: float | None = None  # held-out MSE at step 0
    selection_mse_chosen: float | None = None  # held-out MSE of the checkpoint kept
    distill_alone_seconds: float | None = field(default=None, metadata=combined_by(MEDIAN))
    # one distillation of this student's group trained on its own (fit_seconds holds its share
    # of the group's batched wall time)
    extra: dict = field(default_factory=dict)  # a registered compressor's own facts

    def as_json(self) -> dict:
        values = _present(self)
        extra = values.pop("extra")
        return {**values, **extra}


@dataclass
class DistillRecord:
    """One distillation run."""

    final_loss: float  # training loss at the last step run
    chosen_step: int | None = field(metadata=combined_by(PER_SEED))  # 0: the warm start;
    # None: the last step (no held-out choice)
    selection_checkpoints: list = field(metadata=combined_by(PER_SEED))  # [step, held-out MSE]
    steps_run: int | None = field(default=None, metadata=combined_by(PER_SEED))  # steps taken
    # before the end or an early stop (None: older runs)


@dataclass
class TeacherEntry:
    """A teacher's results: one seed's, or (from_json of the combined tree) over seeds."""

    student_method: str  # whose numbers fill the published student_* keys
    methods: dict[str, MethodScores]
    distillation: dict[str, DistillRecord]
    latency: dict  # {"teacher" | "student": measure_latency's timing at the latency batch}
    params_teacher: int
    flop_ratio: float
    teacher_spearman: float | None = None  # the fitness probe on the teacher's own output
    teacher_task_spearman: float | None = None  # a head: the teacher head's own prediction
    sweep: dict | None = None
    task_trained_denoising_loss: dict | None = None
    head_training: dict | None = None

    def derived(self) -> dict:
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
        return {n: e for n, e in self.entries.items() if e.teacher_task_spearman is not None}

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

    real_data: bool  # False: the synthetic stand-in
    data_note: str  # where the data came from, in one line
    target_rank: int
    input_dim: int
    teachers: list[str]  # in the order they were built
    entries: dict[str, dict]  # teacher -> its summarise_seeds JSON (with std and per_seed)
    methods: list[str]  # the compressors applied
    student_method: str  # a linear teacher's student, whose numbers fill the published keys
    skipped_teachers: dict[str, str]  # teacher -> why it was not built
    seeds: list[int]
    latency_matrix: dict  # device type -> latency.latency_matrix
    data: dict  # the data's sources, sizes, provenance and spectrum
    config: dict  # Config.as_dict()
    environment: dict  # latency.environment, plus run_seconds
    undefined: dict[str, str] = field(default_factory=dict)  # metric -> why it is null
    headline: str = ""  # the finding in a sentence or two (report.headline); "" in older runs

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
