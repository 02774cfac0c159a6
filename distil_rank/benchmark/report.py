"""The JSON summary, the report figure and the console table."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from distil_rank.benchmark.compressors import (
    HEAD_COMPRESSORS,
    SWEEP_METHODS,
    is_hollow,
    method_colours,
    method_label,
    method_marker,
)
from distil_rank.benchmark.data import describe_embeddings
from distil_rank.benchmark.latency import NOISY_RELATIVE_IQR, PLAUSIBLE_OVER_FLOPS
from distil_rank.benchmark.results import Results, RunSummary, TeacherEntry
from distil_rank.files import json_text, write_together
from distil_rank.lowrank import flop_ratio

SUMMARY_NAME = "distil_rank_summary.json"
FIGURE_NAME = "distil_rank_final_report.png"


# ----------------------------------------------------------------------------- console

CONSOLE_WIDTH = 100  # console tables are aligned columns that fit this; the docs' are Markdown


def _table(header: tuple[str, ...], align: str, rows: list[list[str]],
           console: bool) -> list[str]:
    """Markdown (align: l or r per column), or for the console aligned columns."""
    if not console:
        rule = "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"
        return ["| " + " | ".join(header) + " |", rule,
                *("| " + " | ".join(row) + " |" for row in rows)]
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]

    def line(cells):
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w)
                         for c, w, a in zip(cells, widths, align)).rstrip()

    return [line(header), "-" * min(CONSOLE_WIDTH, len(line(header))), *map(line, rows)]


def latency_table(matrix: dict, source: str, console: bool = False) -> list[str]:
    """The dense-versus-rank-r latency matrix as a table, with what it was measured on and the
    break-even batch: the one renderer for the console, bench/ and docs/results.md. On CUDA a column
    says how far the rank-r time is from the memory floor (reading x and writing y once)."""
    floor = matrix.get("copy_bandwidth_gb_s")  # absent or null off CUDA and in older records
    rows = []
    for row in matrix["rows"]:
        d, f = row["dense"], row["factorised"]
        flags = untrusted(row)
        noisy = f" ({', '.join(flags)})" if flags else ""
        rows.append([row["dtype"], row["mode"], str(row["batch"]),
                     f"{d['median_ms']:.4g} ({d['p25_ms']:.3g}-{d['p75_ms']:.3g})",
                     f"{f['median_ms']:.4g} ({f['p25_ms']:.3g}-{f['p75_ms']:.3g})",
                     f"{row['speedup']:.2f}x{noisy}"]
                    + ([f"{f['median_ms'] / row['memory_bound_ms']:.1f}x"] if floor else []))
    header = ("dtype", "mode", "batch", "dense ms (IQR)", "rank-r ms (IQR)", "speedup")
    lines = [f"{source}: {matrix['device']}"
             + (f", {matrix['threads']} threads" if matrix.get("threads") else "")
             + f"; D = {matrix['dim_in']}, r = {matrix['rank']}, "
             f"FLOP ratio {matrix['flop_ratio']:.1f}x.", "",
             *_table(header + (("/ floor",) if floor else ()), "llrrrr" + ("r" if floor else ""),
                     rows, console)]
    notes = _template("latency").render(
        m=matrix, **_fused_facts(matrix), untrusted=any(map(untrusted, matrix["rows"])),
        noisy_iqr=NOISY_RELATIVE_IQR, above_flops=PLAUSIBLE_OVER_FLOPS).rstrip("\n")
    return lines + notes.split("\n") if notes else lines


def break_even_words(matrix: dict, key: str, batch: int | None) -> str:
    """The break-even batch of one dtype/mode group, saying which cells it left out."""
    group = [r for r in matrix["rows"] if f"{r['dtype']}/{r['mode']}" == key]
    trusted = [r["batch"] for r in group if not untrusted(r)]
    left_out = [str(r["batch"]) for r in group if untrusted(r)]
    word = "not reached in the grid" if batch is None else (
        f"{batch} (faster at every {'trusted ' if left_out else ''}batch measured)"
        if trusted and batch == min(trusted) else str(batch))
    if left_out:
        word += f"; batch {', '.join(left_out)} left out as untrusted"
    return word


def speed_words(speedup: float) -> str:
    """'2.04x faster' or '1.28x slower': 'Nx faster' is said only of N above 1."""
    return f"{speedup:.2f}x faster" if speedup >= 1 else \
        f"{1 / speedup:.2f}x slower (speedup {speedup:.2f}x)"


def size_words(compression: float) -> str:
    """'9.7x fewer parameters', or, where the factors hold as many as the dense layer or more
    (a rank of half its width or above), 'as many parameters' or '1.25x more parameters'."""
    if compression == 1:
        return "as many parameters"
    return f"{compression:.1f}x fewer parameters" if compression > 1 else \
        f"{1 / compression:.2f}x more parameters"


def _fused_facts(matrix: dict) -> dict:
    """What the fused kernel's rows of a matrix say, per dtype (templates/latency.md words
    it): under graph replay, its lowest speedup and the one at the largest batch, beside what
    the memory floor would allow there; its largest error; the batches `auto` takes it at."""
    fused_rows: dict[str, list[dict]] = {}  # dtype -> the rows that ran the fused kernel
    for row in matrix["rows"]:
        if "fused" in row:
            fused_rows.setdefault(row["dtype"], []).append(row)
    graph, checks = [], []
    for dtype, kernel_rows in fused_rows.items():
        replayed = {row["batch"]: row for row in kernel_rows if row["mode"] == "fused_graph"}
        if replayed:
            top = replayed[max(replayed)]
            graph.append({"dtype": dtype, "top": top,
                          "low": min(replayed.values(), key=lambda row: row["speedup"]),
                          "ceiling": top.get("memory_bound_ms") and
                          top["dense"]["median_ms"] / top["memory_bound_ms"]})
        checks.append({"dtype": dtype,
                       "error": max(row["fused"]["max_relative_error"] for row in kernel_rows),
                       "own": max(row["fused"]["two_products_error"] for row in kernel_rows),
                       "taken": sorted({row["batch"] for row in kernel_rows
                                        if row["fused"]["auto_takes_kernel"]})})
    return {"graph": graph, "checks": checks}


def fmt(value, spec: str, undefined: str = "n/a") -> str:
    """A figure, or n/a where it is undefined (None in JSON, NaN in memory)."""
    return undefined if value is None or value != value else format(value, spec)


def _figure(value, spec: str) -> str:
    """A figure in a sentence: where it is undefined, the words say so (the reason is the
    JSON's `undefined`)."""
    return fmt(value, spec, "not computable")


def pm(mean, std, spec: str) -> str:
    """mean ± std, the std left out when it is zero or absent (a single seed, or no spread)."""
    if not std or mean is None:
        return fmt(mean, spec)
    return f"{format(mean, spec)} ± {format(std, '.1g')}"


def results_table(view: Results, console: bool = False) -> list[str]:
    """Fidelity per teacher and compressor, explained variance first: one seed's entries or the
    entries over seeds (then with ± std). The console (short names) and docs/results.md."""
    header = ("teacher", "method", "EV", "cosine mean / min", "rel_mse", "probe rho", "fit s") \
        if console else ("teacher", "compressor", "explained variance", "cosine (mean / min)",
                         "rel_mse", "Spearman rho (teacher's probe)", "fit s")
    rows = []
    for teacher, entry in view.entries.items():
        rows.append([teacher, "teacher itself", "1", "1 / 1", "0",
                     fmt(entry.teacher_spearman, ".3f"), ""])  # rho: where there is fitness
        for method, m in entry.methods.items():
            ev_std = view.std(teacher, "methods", method, "explained_variance")
            rows.append([teacher, method if console else method_label(method),
                         pm(m.explained_variance, ev_std, ".4g"),
                         f"{m.cosine:.5f} / {m.cosine_min:.4f}", f"{m.rel_mse:.2e}",
                         fmt(m.spearman, ".3f"), f"{m.fit_seconds:.3f}"])
    return _table(header, "llrrrrr", rows, console)


def task_table(view: Results, console: bool = False) -> list[str]:
    """For teachers inside a head: the task first (the compressed head's Spearman rho against
    measured fitness), then the head's output and the layer's own explained variance."""
    header = ("teacher", "method", "task rho", "share", "head EV", "layer EV", "fit s") \
        if console else ("teacher", "compressor", "task Spearman rho", "share of the teacher's",
                         "head output EV", "layer EV", "fit s")
    rows = []
    for teacher, entry in view.heads().items():
        reference = entry.teacher_task_spearman
        rows.append([teacher, "teacher head itself", fmt(reference, ".3f"), "1", "1", "1", ""])
        for method, m in entry.methods.items():
            rho_std = view.std(teacher, "methods", method, "task_spearman")
            share = None if None in (m.task_spearman, reference) else m.task_spearman / reference
            rows.append([teacher, method if console else method_label(method),
                         pm(m.task_spearman, rho_std, ".3f"), fmt(share, ".3f"),
                         fmt(m.head_explained_variance, ".4g"), fmt(m.explained_variance, ".4g"),
                         f"{m.fit_seconds:.3f}"])
    return _table(header, "llrrrrr", rows, console) if rows else []


def teacher_latency_table(view: Results, console: bool = False) -> list[str]:
    """Teacher against student latency at the run's latency batch, beside the FLOP ratio; where
    every teacher has the same shape, a line saying that the rows differ only by noise."""
    rows, derived = [], [entry.derived() for entry in view.entries.values()]
    for teacher, e in zip(view.entries, derived):
        rows.append([teacher, f"{e['latency_teacher_ms']:.4f}", f"{e['latency_student_ms']:.4f}",
                     f"{e['speedup']:.2f}x", f"{e['flop_ratio']:.2f}x"])
    lines = _table(("teacher", "dense ms", "rank-r ms", "speedup", "FLOP ratio"), "lrrrr", rows,
                   console)
    shapes = {(e["params_teacher"], e["params_student"]) for e in derived}
    if len(derived) > 1 and len(shapes) == 1:
        speedups = [e["speedup"] for e in derived]
        lines.append(f"\nEvery row times a layer of the same shape (a product's time does not "
                     f"depend on the weights' values): the spread, {min(speedups):.2f}x to "
                     f"{max(speedups):.2f}x, is the machine's noise, not a difference between "
                     "teachers.")
    return lines


# ----------------------------------------------------------------------------- figure

TEACHER_COLOURS = ("tab:red", "tab:blue", "tab:green", "tab:brown")
LOSS_STYLES = {"distil": ":", "distil_da": "-", "distil_task": "--"}
SUBPLOT_MARGINS = dict(left=0.046, right=0.99, bottom=0.04, top=0.885, wspace=0.25, hspace=0.26)
FLOOR = 1e-12  # unexplained variance is drawn on a log scale; exact zeros sit at this floor
TALLEST_BAR = 0.6  # of the fidelity panel, whisker included: its label and the legend fit above


def _unexplained(explained):
    """1 - EV for a log axis; an undefined EV (NaN or None) stays NaN and is not drawn."""
    return [math.nan if v is None or v != v else max(1 - v, FLOOR) for v in explained]


def _finite(values, default):
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return finite or [default]


def _panel_losses(ax, summary, curves, colours):
    for teacher in summary.teachers:
        for method, losses in curves["distillation"][teacher].items():
            losses, style = torch.as_tensor(losses), LOSS_STYLES.get(method, "-.")
            window = max(1, len(losses) // 50)
            smooth = losses.unfold(0, window, window).mean(1) if len(losses) >= window else losses
            steps = torch.arange(len(smooth)) * window + window
            ax.plot(steps, smooth, style, color=colours[teacher], label=f"{teacher} {method}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss, MSE + alpha(1 - cos) (log)")
    ax.set_title(f"Distillation loss, seed {summary.seeds[0]}; dotted: SVD start (published);"
                 "\nsolid: closed-form start; dashed: through the head (its output's MSE)")
    ax.legend(fontsize=7, ncol=2)


def _panel_fidelity(ax, summary, view: Results):
    teachers, methods = summary.teachers, summary.methods
    colours = method_colours(methods)
    width, tops = 0.8 / len(methods), []  # tops: each bar's whisker, where its label starts
    for i, method in enumerate(methods):
        present = [j for j, t in enumerate(teachers) if method in view.entries[t].methods]
        means = [view.entries[teachers[j]].methods[method].explained_variance for j in present]
        stds = [view.std(teachers[j], "methods", method, "explained_variance") for j in present]
        values = _unexplained(means)
        xs = [j + (i - (len(methods) - 1) / 2) * width for j in present]
        bars = ax.bar(xs, values, width, yerr=stds, capsize=2,
                      label=method_label(method), color=colours[method])
        # each label upright above its whisker, so that neighbours of equal height never overlap
        for bar, ev, std in zip(bars, means, stds):
            whisker = std if std and math.isfinite(std) else 0
            top = bar.get_height() + whisker if ev == ev else 1.0
            tops.append(top)
            ax.annotate(f"EV {fmt(ev, '.3g')}", (bar.get_x() + bar.get_width() / 2, top),
                        ha="center", va="bottom", fontsize=6.5, xytext=(0, 2), rotation=90,
                        textcoords="offset points")
    ax.set_xticks(range(len(teachers)), teachers)
    ax.set_yscale("log")
    ax.axhline(1.0, color="black", lw=0.8, ls="--", label="EV 0: predicting the mean")
    tallest, bottom = max(_finite(tops, 1.0) + [1.0]), ax.get_ylim()[0]
    ax.set_ylim(top=bottom * (tallest / bottom) ** (1 / TALLEST_BAR))  # on a log axis
    ax.set_ylabel("unexplained variance 1 - EV, validation (log; lower is better)")
    n = len(summary.seeds)
    cosines = [m.cosine for e in view.entries.values() for m in e.methods.values()]
    high = sum(c > 0.99 for c in cosines)
    ax.set_title(f"Fidelity at rank {summary.target_rank}: bar height 1 - EV, label EV "
                 f"(explained variance);\nmean of {n} seed{'s' * (n > 1)}, whiskers: std. "
                 f"Plain cosine above 0.99 for {high} of {len(cosines)} bars")
    ax.legend(fontsize=7, loc="upper right", ncol=2)


def _span(values: list[float], spec: str) -> str:
    if any(v is None or v != v for v in values):
        return _figure(None, spec)
    low, high = min(values), max(values)
    return format(low, spec) if format(low, spec) == format(high, spec) else \
        f"{format(low, spec)} to {format(high, spec)}"


def headline(summary: RunSummary) -> str:
    """The run's finding in two or three sentences, every figure from the summary: what the
    closed form, the SVD and the student keep of the linear teachers' output variance, what the
    best compressed head keeps of the task, and the speedup at the latency batch with its
    flags. The words: templates/headline.md."""
    view, student = summary.results(), summary.student_method
    linear = [e for e in view.entries.values() if not e.is_head]
    ev = {m: [e.methods[m].explained_variance for e in linear]
          for m in ("data_aware", "svd", "svd_bias", student) if linear and m in linear[0].methods}
    pairs = [(s, b) for s, b in zip(ev.get("svd", []), ev.get("svd_bias", []))
             if s is not None and b is not None and s == s and b == b and s < 1]
    # explained variance is undefined where the teacher's output does not vary
    batch, matrix = summary.setting("latency", "batch"), summary.latency_matrix.get("cpu")
    row = next((r for r in (matrix or {}).get("rows", []) if r["batch"] == batch
                and r["mode"] == "eager" and r["dtype"] == "float32"), None)
    text = _template("headline").render(
        summary=summary, ev=ev, student=student, data=describe_data(summary),
        compression=view.entries[summary.teachers[0]].derived()["compression"],
        offset=[(b - s) / (1 - s) for s, b in pairs], heads=view.heads(), row=row,
        device=matrix and matrix["device"], flags=row and untrusted(row))
    return " ".join(line for line in text.splitlines() if line)


def template_environment(folder: Path):
    """Jinja2 for Markdown templates in `folder`, as the report and the docs generator fill
    them: a missing figure is an error, block tags leave no blank lines, and `f` formats a
    figure by a format spec, {{ x | f(".3f") }} ("not computable" where it is undefined)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(folder),
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True, autoescape=False)
    env.filters["f"] = _figure
    return env


def _template(name: str):
    """A template of distil_rank/benchmark/templates."""
    env = template_environment(Path(__file__).parent / "templates")
    env.globals.update(span=_span, speed_words=speed_words, best_head_method=best_head_method,
                       break_even_words=break_even_words, size_words=size_words)
    return env.get_template(f"{name}.md")


def best_head_method(entry: TeacherEntry) -> str | None:
    """Of the compressors that know the head (HEAD_COMPRESSORS), the one whose head predicts
    the measured fitness best; None for a teacher without them (a linear one)."""
    def rho(method):  # an undefined rho (constant fitness) ranks last
        value = entry.methods[method].task_spearman
        return -math.inf if value is None or value != value else value

    return max((m for m in HEAD_COMPRESSORS if m in entry.methods), key=rho, default=None)


def describe_data(summary: RunSummary) -> str:
    """What the embeddings are, from their provenance: ESM-2 only where it says so."""
    if not summary.real_data:
        return "SYNTHETIC embeddings"
    return describe_embeddings(summary.data.get("provenance") or {})


def untrusted(row: dict) -> list[str]:
    """Why a latency cell cannot be trusted (latency.trust_flags); older records kept only
    `noisy`."""
    return row.get("untrusted", ["noisy"] if row.get("noisy") else [])


def _panel_latency(ax, summary):
    matrices = summary.latency_matrix
    styles = iter(("o-", "s--", "^-.", "v:", "D-", "x--"))
    hollow = False
    for matrix in matrices.values():
        groups = {}
        for row in matrix["rows"]:
            groups.setdefault(f"{row['dtype']} {row['mode']}", []).append(row)
        for key, rows in groups.items():
            line, = ax.plot([r["batch"] for r in rows], [r["speedup"] for r in rows],
                            next(styles), label=f"{matrix['device'][:28]} {key}")
            doubtful = [r for r in rows if untrusted(r)]  # drawn hollow: not a finding
            ax.plot([r["batch"] for r in doubtful], [r["speedup"] for r in doubtful], "o",
                    ms=9, mfc="white", mec=line.get_color(), zorder=3)
            hollow = hollow or bool(doubtful)
        flop = matrix["flop_ratio"]
    if hollow:
        ax.plot([], [], "o", ms=9, mfc="white", mec="gray",
                label="hollow: untrusted (noisy, quantised or above the FLOP ratio)")
    if matrices:
        ax.axhline(flop, color="gray", ls=":", lw=1, label=f"FLOP ratio {flop:.1f}x")
    ax.axhline(1.0, color="black", lw=0.8, label="break-even (1x)")
    ax.set_ylim(bottom=0)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size (rows per forward pass, log)")
    ax.set_ylabel("speedup of the rank-r layer (dense time / rank-r time)")
    ax.set_title("Is the rank-r layer faster? Speedup against batch size\n"
                 "(GPU figures: bench/latency.py, docs/results.md)")
    ax.legend(fontsize=7)


def _panel_pareto(ax, summary, view: Results, teacher, colour):
    sweep = view.entries[teacher].sweep
    if not sweep:
        ax.text(0.5, 0.5, "no rank sweep in this run (--no-sweep)", ha="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return
    dim = summary.input_dim
    curve = sweep["closed_form_train_explained_variance"]
    ranks = list(range(1, dim // 2 + 1))  # up to the rank where the factors stop saving
    ax.plot([flop_ratio(dim, dim, r) for r in ranks], _unexplained([curve[r] for r in ranks]),
            color="black", lw=1, label="closed form, exact (train rows)")
    std = view.std(teacher, "sweep")
    colours = method_colours(summary.methods)
    for method in SWEEP_METHODS:  # a closed form's points alone: the exact curve is drawn
        values = sweep["methods"][method]["explained_variance"]
        errs = std["methods"][method]["explained_variance"]
        ax.errorbar(sweep["compression"], _unexplained(values), yerr=errs, capsize=2,
                    color=colours[method], label=f"{method} (validation)",
                    ls="none" if is_hollow(method) else "-", **method_marker(method))
    ax.set_xscale("log")
    ax.set_yscale("log")
    measured = [v for m in ("data_aware", "distil_da") for v in
                _unexplained(sweep["methods"][m]["explained_variance"])]
    ax.set_ylim(bottom=max(min(_finite(measured, 1.0)) / 30, FLOOR))
    ax.axhline(1.0, color="black", lw=0.6, ls="--")
    ax.set_xlabel("compression (teacher params / student params, log)")
    ax.set_ylabel("unexplained variance 1 - EV (log)")
    targets = sweep["smallest_rank_for_train_explained_variance"]
    text = ", ".join(f"EV {t}: r={'n/a' if r is None else round(r)}" for t, r in targets.items())
    ax.set_title(f"{teacher}: fidelity against compression\nsmallest rank for {text}",
                 color=colour, fontsize=9.5)
    ax.legend(fontsize=7, loc="lower right")


def _panel_teacher_spectra(ax, summary, curves, colours):
    rank = summary.target_rank
    for teacher in summary.teachers:
        s = torch.as_tensor(curves["teacher_singular_values"][teacher])
        ax.plot(torch.arange(1, len(s) + 1), s / s[0], color=colours[teacher], label=teacher)
    ax.axvline(rank, color="black", ls="--", lw=1, label=f"rank cut r = {rank}")
    ax.set_yscale("log")
    ax.set_xlabel("index i")
    ax.set_ylabel("singular value s_i / s_1 (log)")
    ax.set_title(f"Teacher weight spectra, seed {summary.seeds[0]} (what SVD sees)")
    ax.legend(fontsize=7)


def _panel_embedding_spectrum(ax, summary, curves):
    rank = summary.target_rank
    ev = torch.as_tensor(curves["embedding_eigenvalues"]).clamp_min(1e-30)
    share = ev / ev.sum()
    k = torch.arange(1, len(ev) + 1)
    ax.plot(k, share, color="black", label="share of variance")
    ax.axvline(rank, color="black", ls="--", lw=1, label=f"rank cut r = {rank}")
    ax.set_yscale("log")
    ax.set_xlabel("principal component k (centred training embeddings)")
    ax.set_ylabel("eigenvalue / total (log)")
    twin = ax.twinx()
    twin.plot(k, share.cumsum(0), color="tab:blue", label="cumulative share")
    twin.set_ylim(0, 1.02)
    twin.set_ylabel("cumulative share of variance", color="tab:blue")
    eff = summary.data["effective_rank"]
    ax.set_title(f"The embeddings' own spectrum: participation ratio "
                 f"{eff['participation_ratio']:.1f};\n{eff['components_for_90pct']} / "
                 f"{eff['components_for_95pct']} / {eff['components_for_99pct']} components hold "
                 f"90 / 95 / 99% of the variance", fontsize=9.5)
    handles = [a.get_legend_handles_labels() for a in (ax, twin)]
    ax.legend(handles[0][0] + handles[1][0], handles[0][1] + handles[1][1], fontsize=7,
              loc="center right")


def render_figure(path: str | Path, summary: RunSummary, curves: dict) -> None:
    """Nine panels, one message each: distillation losses; fidelity per teacher and compressor;
    speedup against batch size; fidelity against compression per teacher (the rank sweep, with
    the exact closed-form curve); teacher spectra; the embeddings' own spectrum.

    curves: {"distillation": {teacher: {method: [loss per step]}},
             "teacher_singular_values": {teacher: [...]}, "embedding_eigenvalues": [...]}
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # every title at its axes' top, where none has ticks above it: left to find that place,
    # matplotlib measured each panel's tick labels again, for the same picture
    with plt.rc_context({"axes.titley": 1.0}):
        fig, axes = plt.subplots(3, 3, figsize=(19, 16))
        try:
            _draw_panels(fig, axes, summary, curves)
            # zlib level 3: here as small a file as the default 6, in half the time
            fig.savefig(path, dpi=100, format="png", pil_kwargs={"compress_level": 3})
        finally:
            plt.close(fig)


def _draw_panels(fig, axes, summary: RunSummary, curves: dict) -> None:
    teachers, view = summary.teachers, summary.results()
    colours = {t: TEACHER_COLOURS[i % len(TEACHER_COLOURS)] for i, t in enumerate(teachers)}
    data_word = describe_data(summary)
    fig.suptitle(
        f"Distil-Rank: {summary.input_dim}x{summary.input_dim} layers at rank "
        f"{summary.target_rank} "
        f"({size_words(view.entries[teachers[0]].derived()['compression'])}),\n"
        f"{data_word} ({summary.data['train']['rows']} train / "
        f"{summary.data['val']['rows']} validation rows), {len(summary.seeds)} seed(s)",
        fontsize=13,
    )
    _panel_losses(axes[0, 0], summary, curves, colours)
    _panel_fidelity(axes[0, 1], summary, view)
    _panel_latency(axes[0, 2], summary)
    for ax, teacher in zip(axes[1], teachers):  # the linear teachers; a head's layer is below
        _panel_pareto(ax, summary, view, teacher, colours[teacher])
    _panel_teacher_spectra(axes[2, 0], summary, curves, colours)
    _panel_embedding_spectrum(axes[2, 1], summary, curves)
    heads = list(view.heads())  # a teacher judged by its task gets the panel; else the text
    if heads:
        _panel_task(axes[2, 2], summary, view, heads[0])
    else:
        axes[2, 2].set_axis_off()
        _text_panel(axes[2, 2], summary, view)
    # fixed margins, as fig.tight_layout(rect=(0, 0, 1, 0.96)) sets them for this grid (a
    # second of layout per figure, for the same picture)
    fig.subplots_adjust(**SUBPLOT_MARGINS)


def _panel_task(ax, summary, view: Results, teacher):
    """The task metric against rank for every method, the teacher head's as a line."""
    entry = view.entries[teacher]
    sweep, std = entry.sweep, view.std(teacher, "sweep")
    colours = method_colours(summary.methods)
    if sweep:
        for method, curve in sweep["methods"].items():
            ax.errorbar(sweep["ranks"], curve["task_spearman"], capsize=2,
                        yerr=std["methods"][method]["task_spearman"], color=colours[method],
                        label=method_label(method), **method_marker(method))
        ax.set_xscale("log", base=2)
    else:
        for i, (method, m) in enumerate(entry.methods.items()):
            ax.bar(i, m.task_spearman, color=colours[method], label=method_label(method))
        ax.set_xticks([])
    reference = entry.teacher_task_spearman
    if reference == reference:  # not NaN
        ax.axhline(reference, color="black", lw=1, label=f"teacher head {reference:.3f}")
    ax.axvline(summary.target_rank, color="black", ls="--", lw=0.8)
    ax.set_xlabel("rank r of the head's first layer (log)")
    ax.set_ylabel("Spearman rho, head's prediction vs measured fitness (validation)")
    drawn = ", ".join(sweep["methods"]) if sweep else ", ".join(entry.methods)
    ax.set_title(f"{teacher}: the task against rank (mean over seeds)\n{drawn}", fontsize=9.5)
    ax.legend(fontsize=7, loc="lower right")


def _text_panel(ax, summary, view: Results):
    """What a reader should take away, in numbers from this run."""
    rank, student = summary.target_rank, summary.student_method
    lines = [f"At rank {rank}, explained variance on validation (mean over seeds):"]
    for teacher, entry in view.entries.items():
        m = entry.methods
        lines.append(f"  {teacher:<13} svd {m['svd'].explained_variance:>9.3g}   "
                     f"data_aware {m['data_aware'].explained_variance:.3f}   "
                     f"{student} {m[student].explained_variance:.3f}")
    if summary.data["has_fitness"]:
        lines.append("")
        lines.append("Downstream: Spearman rho of a fitness probe fitted on the teacher:")
        for teacher, entry in view.entries.items():
            lines.append(f"  {teacher:<13} teacher {entry.teacher_spearman:.3f}   "
                         f"student {entry.methods[student].spearman:.3f}")
    ax.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=8.5,
            transform=ax.transAxes)


def write_results(out: Path, summary: RunSummary, curves: dict) -> tuple[Path, Path]:
    """The JSON and the figure, written as a pair (files.write_together): `out` keeps the old
    pair or gets the new one, never a mix."""
    targets = (out / SUMMARY_NAME, out / FIGURE_NAME)
    write_together({targets[0]: lambda tmp: Path(tmp).write_text(json_text(summary.to_json())),
                    targets[1]: lambda tmp: render_figure(tmp, summary, curves)})
    return targets
