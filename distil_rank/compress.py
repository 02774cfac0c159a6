"""distil-rank-compress: an ESM-2 encoder compressed to a parameter budget, from the command line.

    python -m distil_rank.compress --model esm2_t33_650M_UR50D --fasta proteins.fasta \\
        --budget 0.5 --out esm650m-half/ [--objective output|layer] [--holdout 0.2]

The model loads as the embedding tool loads it (a local folder, or an ESM-2 name in the local
cache). The FASTA's proteins are split (seeded) into calibration and held-out ones; the
encoder's Linear layers are calibrated on the calibration proteins' hidden states (padding
excluded) and compressed with `compress_model(..., budget=F)`, the ranks allocated exactly
across the layers, each layer's error weighted by its effect on the mean-pooled protein
embedding (`--objective layer`: by its own relative output error instead). Writes, as a pair,
`model.lowrank.safetensors` and `report.json`: each layer's rank, explained variance and
parameters; on the held-out proteins, the mean-pooled embedding's cosine and explained
variance against the dense model's; tokens per second of the dense and the compressed model,
timed in turns (median and spread of several passes, with the latency matrix's flags).
Reload with `load_compressed(EsmModel(config, add_pooling_layer=False), path)`: the tool's
model, like the embedding tool's, has no pooler.
"""

from __future__ import annotations

import argparse
import copy
import sys
import warnings
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path

import torch
from torch import nn

from distil_rank.api import CompressionConfig, compress_model, save_compressed, weights_kept
from distil_rank.embed import (
    embed_sequences,
    length_batches,
    load_model,
    read_fasta,
    residue_mean,
    truncation_note,
    within_limit,
)
from distil_rank.embeddings import split_indices
from distil_rank.errors import InputError, OneLineParser, cli_exit_code, seed_argument
from distil_rank.families import ESM2, ModelFamily
from distil_rank.files import check_writable_folder, json_text, write_together
from distil_rank.kernels.clock import in_turns
from distil_rank.metrics import explained_variance
from distil_rank.runtime import add_threads_option, apply_threads, freeze_imports, resolve_device

MODEL_FILE, REPORT_FILE = "model.lowrank.safetensors", "report.json"


def create_parser() -> argparse.ArgumentParser:
    p = OneLineParser(description="Compress an ESM-2 encoder's Linear layers to a budget.")
    p.add_argument("--model", required=True,
                   help="an ESM-2 name or a local transformers folder (of a family in "
                        "distil_rank/families.py)")
    p.add_argument("--fasta", required=True, help="proteins to calibrate on and to measure with")
    p.add_argument("--budget", type=float, required=True,
                   help="fraction in (0, 1] of the encoder's Linear weights to keep")
    p.add_argument("--out", required=True, help="folder for the model and the report")
    p.add_argument("--objective", choices=("layer", "output"), default="output",
                   help="output: the error of the mean-pooled embedding; layer: each layer's "
                        "own relative output error, which can allocate worse than uniform ranks "
                        "(default: output)")
    p.add_argument("--holdout", type=float, default=0.2,
                   help="fraction of the proteins held out for the report (default: 0.2)")
    p.add_argument("--max-tokens", type=int, default=4096,
                   help="tokens per batch, padding included (default: 4096)")
    p.add_argument("--device", default="auto",
                   help="auto (CUDA when available; the default), cpu, cuda or cuda:N")
    p.add_argument("--seed", type=seed_argument, default=0,
                   help="seeds the split and the probes (default: 0)")
    add_threads_option(p)
    return p


def token_batches(tokenizer, sequences: list[str], max_tokens: int, device,
                  family: ModelFamily = ESM2) -> list[dict]:
    """Length-sorted padded batches within the token budget, as model keyword arguments."""
    return [{k: v.to(device) for k, v in tokenizer([family.text(sequences[i]) for i in rows],
                                                   padding=True, return_tensors="pt").items()}
            for rows in length_batches([len(s) for s in sequences], max_tokens,
                                       family.special_tokens)]


def pooled(model: nn.Module, batch: dict, family: ModelFamily = ESM2) -> torch.Tensor:
    """The protein embedding that the embedding tool writes: the last hidden states' mean over
    the residues."""
    return residue_mean(model(**batch).last_hidden_state, batch["attention_mask"], family)


TIMING_PASSES, TIMING_PROTEINS = 5, 256  # timed passes per model; proteins each pass embeds


def throughput(models: dict[str, nn.Module], tokenizer, sequences: list[str], max_tokens: int,
               device: torch.device, passes: int = TIMING_PASSES,
               family: ModelFamily = ESM2) -> dict:
    """Tokens per second of each model over (at most TIMING_PROTEINS of) `sequences`, the
    models embedding them in turns, pass by pass after one untimed pass each, so that both meet
    the same load: the median with its quartiles, and the clock's flags (noisy, quantised);
    `speedup`, the first model's median time over the last's, and `untrusted`, why it is not a
    finding."""
    timed = sequences[:TIMING_PROTEINS]
    tokens = sum(len(s) + family.special_tokens for s in timed)  # residues and special tokens
    fns = [lambda m=m: embed_sequences(m, tokenizer, timed, max_tokens=max_tokens,
                                       progress=False, family=family) for m in models.values()]
    record = {"proteins": len(timed), "tokens": tokens, "passes": passes}
    summaries = in_turns(fns, device, passes)
    for name, summary in zip(models, summaries):
        record[name] = {"tokens_per_second": tokens / (summary["median_ms"] / 1e3),
                        "tokens_per_second_p25_p75": [tokens / (summary[k] / 1e3)
                                                      for k in ("p75_ms", "p25_ms")],
                        **summary}
    first, last = summaries[0], summaries[-1]
    record["speedup"] = first["median_ms"] / last["median_ms"]
    record["untrusted"] = [flag for flag in ("noisy", "quantised")
                           if first[flag] or last[flag]]
    return record


def _check(args: argparse.Namespace) -> CompressionConfig:
    """The run's CompressionConfig (the library's one check of the options), before any model
    is loaded; a bad option is refused naming its flag."""
    try:
        config = CompressionConfig(budget=args.budget, objective=args.objective, seed=args.seed)
    except ValueError as err:
        raise InputError(f"--budget {args.budget}: {str(err).split(': ', 1)[-1]}") from None
    if not 0 < args.holdout < 1:
        raise InputError(f"--holdout {args.holdout}: must be between 0 and 1 (exclusive)")
    if args.max_tokens < 3:
        raise InputError(f"--max-tokens {args.max_tokens}: too small for one residue")
    check_writable_folder(args.out, "--out")
    return config


def run(args: argparse.Namespace) -> dict:
    config = _check(args)
    threads = apply_threads(args.threads)
    records = read_fasta(args.fasta)
    if len(records) < 2:
        raise InputError(f"{args.fasta}: {len(records)} protein(s), need 2 to calibrate on one "
                         "and measure on another")
    device = resolve_device(args.device)
    tokenizer, model, source, family = load_model(args.model, device, torch.float32)
    names = [n for n, m in model.named_modules()
             if isinstance(m, nn.Linear) and n.startswith(family.encoder_prefix)]
    if not names:
        raise InputError(f"--model {args.model}: its encoder has no Linear layer to compress")
    sequences, limit, truncated = within_limit(records, model, args.fasta, family=family)
    fit, held = split_indices(len(sequences), args.holdout, args.seed)
    if len(held) < 2:
        raise InputError(f"--holdout {args.holdout}: of {len(sequences)} proteins in "
                         f"{args.fasta} it holds out {len(held)}; the held-out explained "
                         "variance needs at least 2 (more proteins, or a larger --holdout)")
    calibration = token_batches(tokenizer, [sequences[i] for i in fit], args.max_tokens, device,
                                family)
    holdout_sequences = [sequences[i] for i in held]
    dense = embed_sequences(model, tokenizer, holdout_sequences, max_tokens=args.max_tokens,
                            progress=False, family=family)
    original = copy.deepcopy(model)  # timed in turns with the compressed model below
    with warnings.catch_warnings(record=True) as warned:  # said as notes, after the run
        warnings.simplefilter("always")
        try:
            layers = compress_model(
                model, calibration, replace(config, layers=names),
                call=partial(pooled, family=family) if args.objective == "output" else None,
                holdout=token_batches(tokenizer, holdout_sequences, args.max_tokens, device,
                                      family))
        except ValueError as err:  # e.g. a budget below rank 1 in every layer
            what = f"--budget {args.budget}" if "budget" in str(err) else str(args.fasta)
            raise InputError(f"{what}: {err}") from None
    small = embed_sequences(model, tokenizer, holdout_sequences, max_tokens=args.max_tokens,
                            progress=False, family=family)
    speed = throughput({"dense": original, "compressed": model}, tokenizer, holdout_sequences,
                       args.max_tokens, device, family=family)
    del original
    report = {**_report(args, source, layers, dense, small, speed, len(fit), truncated),
              "threads": asdict(threads)}
    out = Path(args.out)
    write_together({out / MODEL_FILE: lambda tmp: save_compressed(model, tmp),
                    out / REPORT_FILE: lambda tmp: Path(tmp).write_text(json_text(report))})
    truncation_note(truncated, limit)  # after the run: a failed one says one line only
    for warning in warned:
        print(f"note: {warning.message}", file=sys.stderr)
    flags = f"; untrusted: {', '.join(speed['untrusted'])}" if speed["untrusted"] else ""
    print(f"kept {report['weights_kept_fraction']:.1%} of the encoder's Linear weights; held-out "
          f"embedding cosine {report['holdout']['cosine']:.4f}, explained variance "
          f"{_figure(report['holdout'], 'explained_variance')}; tokens/s "
          f"{speed['dense']['tokens_per_second']:.0f} -> "
          f"{speed['compressed']['tokens_per_second']:.0f} (medians of {speed['passes']} passes "
          f"in turns, speedup {speed['speedup']:.2f}x{flags}); wrote {out / MODEL_FILE} and "
          f"{out / REPORT_FILE}")
    return report


def _report(args, source, layers, dense, small, speed, calibrated, truncated) -> dict:
    kept, total = weights_kept(layers)
    return {
        "model": args.model, "model_source": source, "fasta": str(args.fasta),
        "budget": args.budget, "objective": args.objective, "seed": args.seed,
        "proteins": {"calibration": calibrated, "holdout": len(dense),
                     "truncated_to_the_model_limit": truncated},
        "weights_kept_fraction": kept / total,
        "layers": [{"name": r.name, "rank": r.rank, "in_features": r.in_features,
                    "out_features": r.out_features, "params_before": r.params_before,
                    "params_after": r.params_after,
                    "objective": r.objective,
                    "explained_variance_calibration": r.explained_variance_calibration,
                    "explained_variance_holdout": r.explained_variance_holdout}
                   for r in layers],
        "holdout": _holdout_figures(dense, small),
        "throughput": speed,
    }


def _figure(record: dict, key: str) -> str:
    value = record[key]
    return f"{value:.4f}" if value is not None else \
        f"not computable ({record[key + '_undefined']})"


def _holdout_figures(dense: torch.Tensor, small: torch.Tensor) -> dict:
    """The held-out proteins' embedding cosine and explained variance, compressed against
    dense; where the dense embeddings do not vary, explained variance is None with the reason
    (it would be 0 / 0)."""
    figures = {"cosine": torch.nn.functional.cosine_similarity(small, dense).mean().item()}
    if bool((dense == dense[0]).all()):
        return {**figures, "explained_variance": None, "explained_variance_undefined":
                "the held-out proteins' dense embeddings are all the same"}
    return {**figures, "explained_variance": explained_variance(dense, small)}


def main(argv: list[str] | None = None) -> int:
    freeze_imports(argv)
    return cli_exit_code(run, create_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
