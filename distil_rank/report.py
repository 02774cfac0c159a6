"""The JSON summary, the report figure and the console table."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import torch

SUMMARY_NAME = "distil_rank_summary.json"
FIGURE_NAME = "distil_rank_final_report.png"
METHOD_LABELS = {
    "svd": "SVD (data-free)",
    "data_aware": "data-aware closed form",
    "distil": "distil (SVD start, published)",
    "distil_da": "distil_da (closed-form start)",
}


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: a reader never sees a
    half-written file, and a failure leaves the old one in place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; null says "not defined here"
    return value


def write_json(path: Path, payload: dict) -> None:
    text = json.dumps(_jsonable(payload), indent=2, allow_nan=False) + "\n"
    _atomic_write(path, lambda tmp: Path(tmp).write_text(text))


# ----------------------------------------------------------------------------- console


def format_table(name: str, result: dict) -> str:
    methods = result["methods"]
    has_rho = "teacher_spearman" in result
    header = f"{'method':<32}{'params':>9}{'expl.var':>10}{'cosine':>9}{'rel_mse':>11}"
    header += f"{'rho':>7}" if has_rho else ""
    header += f"{'fit s':>8}"
    lines = [f"== {name}: {result['params_teacher']:,} parameters, "
             f"explained variance is the headline ==", header]
    if has_rho:
        lines.append(f"{'teacher (reference)':<32}{result['params_teacher']:>9,}{1.0:>10.4f}"
                     f"{1.0:>9.4f}{0.0:>11.2e}{result['teacher_spearman']:>7.3f}{'':>8}")
    for method, m in methods.items():
        row = (f"{METHOD_LABELS.get(method, method):<32}{m['params']:>9,}"
               f"{m['explained_variance']:>10.4f}{m['cosine']:>9.4f}{m['rel_mse']:>11.2e}")
        row += f"{m['spearman']:>7.3f}" if has_rho else ""
        row += f"{m['fit_seconds']:>8.2f}"
        lines.append(row)
    lat = result["latency"]
    lines.append(
        f"latency at batch {lat['teacher']['batch']} on {lat['teacher']['device']}: teacher "
        f"{result['latency_teacher_ms']:.4f} ms, student {result['latency_student_ms']:.4f} ms, "
        f"speedup {result['speedup']:.2f}x (FLOP ratio {result['flop_ratio']:.2f}x)"
    )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- figure


def write_figure(path: Path, summary: dict, curves: dict) -> None:
    """Four panels: distillation losses; explained variance per teacher and compressor; each
    teacher's singular values with the rank cut; the embeddings' own spectrum.

    curves: {"distillation": {teacher: {method: [loss per step]}},
             "teacher_singular_values": {teacher: [...]}, "embedding_eigenvalues": [...]}
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    teachers = summary["teachers"]
    rank = summary["target_rank"]
    colours = dict(zip(teachers, ("tab:red", "tab:blue", "tab:green")))
    fig, axes = plt.subplots(2, 2, figsize=(14, 10.5))
    data_word = "real ESM-2" if summary["real_data"] else "SYNTHETIC"
    fig.suptitle(
        f"Distil-Rank: {summary['input_dim']}x{summary['input_dim']} layers at rank {rank} "
        f"({summary[teachers[0]]['compression']:.1f}x fewer parameters), {data_word} embeddings "
        f"({summary['data']['train']['rows']} train / {summary['data']['val']['rows']} val)",
        fontsize=12,
    )

    ax = axes[0, 0]
    for teacher in teachers:
        for method, style in (("distil", ":"), ("distil_da", "-")):
            losses = torch.as_tensor(curves["distillation"][teacher][method])
            window = max(1, len(losses) // 50)
            smooth = losses.unfold(0, window, window).mean(1) if len(losses) >= window else losses
            steps = torch.arange(len(smooth)) * window + window
            ax.plot(steps, smooth, style, color=colours[teacher], label=f"{teacher} {method}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss: MSE + alpha(1 - cos)  (log)")
    ax.set_title("Distillation loss (dotted: SVD start; solid: closed-form start)")
    ax.legend(fontsize=8, ncol=2)

    ax = axes[0, 1]
    methods = list(METHOD_LABELS)
    width = 0.8 / len(methods)
    method_colours = ("tab:gray", "tab:purple", "tab:orange", "tab:cyan")
    for i, method in enumerate(methods):
        # 1 - explained variance: the share of the teacher's output variation the student misses.
        values = [max(1 - summary[t]["methods"][method]["explained_variance"], 1e-12)
                  for t in teachers]
        xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(teachers))]
        bars = ax.bar(xs, values, width, label=METHOD_LABELS[method], color=method_colours[i])
        for bar, value in zip(bars, values):
            ax.annotate(f"{1 - value:.3g}", (bar.get_x() + bar.get_width() / 2, value),
                        ha="center", va="bottom", fontsize=7, xytext=(0, 2),
                        textcoords="offset points")
    ax.set_xticks(range(len(teachers)), teachers)
    ax.set_yscale("log")
    ax.axhline(1.0, color="black", lw=0.8, ls="--")
    ax.annotate("= predicting the teacher's mean output", (len(teachers) - 0.6, 1.0),
                fontsize=7, va="bottom", ha="right")
    top = max(max(1 - summary[t]["methods"][m]["explained_variance"], 1e-12)
              for t in teachers for m in methods)
    ax.set_ylim(top=max(top, 1.0) * 30)
    ax.set_ylabel("unexplained variance, 1 - EV, on validation (log; lower is better)")
    ax.set_title("Fidelity per teacher and compressor (labels: explained variance EV)\n"
                 "plain cosine flatters: it is near 1 for most of these bars")
    ax.legend(fontsize=8, loc="upper right", ncol=2)

    ax = axes[1, 0]
    for teacher in teachers:
        s = torch.as_tensor(curves["teacher_singular_values"][teacher])
        ax.plot(torch.arange(1, len(s) + 1), s / s[0], color=colours[teacher], label=teacher)
    ax.axvline(rank, color="black", ls="--", lw=1, label=f"rank cut r = {rank}")
    ax.set_yscale("log")
    ax.set_xlabel("index i")
    ax.set_ylabel("singular value s_i / s_1  (log)")
    ax.set_title("Teacher weight spectra (what SVD sees)")
    ax.legend(fontsize=8)

    ax = axes[1, 1]
    ev = torch.as_tensor(curves["embedding_eigenvalues"]).clamp_min(1e-30)
    share = ev / ev.sum()
    ax.plot(torch.arange(1, len(ev) + 1), share, color="black", label="share of variance")
    ax.axvline(rank, color="black", ls="--", lw=1, label=f"rank cut r = {rank}")
    ax.set_yscale("log")
    ax.set_xlabel("principal component k (centred training embeddings)")
    ax.set_ylabel("eigenvalue / total  (log)")
    twin = ax.twinx()
    twin.plot(torch.arange(1, len(ev) + 1), share.cumsum(0), color="tab:blue",
              label="cumulative share")
    twin.set_ylim(0, 1.02)
    twin.set_ylabel("cumulative share of variance", color="tab:blue")
    captured = share[:rank].sum().item()
    ax.set_title(f"The embeddings' own spectrum: the top {rank} components hold "
                 f"{100 * captured:.1f}% of the variance")
    lines = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="center right")

    fig.tight_layout(rect=(0, 0, 1, 0.96))
    _atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
