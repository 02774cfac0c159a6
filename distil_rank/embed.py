"""Embed protein sequences with ESM-2 and write the file format main.py reads.

    pip install -r requirements-embed.txt
    python -m distil_rank.embed --fasta proteins.fasta --model esm2_t33_650M_UR50D --out emb.pt
    python -m distil_rank.embed --fasta proteins.fasta --model esm2_t33_650M_UR50D \\
        --out data/ --split 0.8 --seed 0          # writes data/embeddings_{train,val}.pt
    python -m distil_rank.embed --fasta x.fasta --model path/to/local_model --out emb.pt

ESM-2 runs through Hugging Face transformers (EsmModel). --model takes an ESM-2 release name
(mapped to its hub id, which needs the weights reachable or cached) or a local directory in the
transformers format (save_pretrained), which is how an offline user and the tests pass it.

Each protein's embedding is the mean of the chosen layer's hidden states over its residues only:
the BOS (<cls>) and EOS tokens and the padding are left out. The final layer (the default) is the
one after ESM-2's closing layer norm, as in the ESM repository's extract script.
Sequences are sorted by length and batched under a token budget (padding wastes little), then
put back in input order. Longer than the model's limit (max_position_embeddings - 2 residues):
truncated to the limit (the default, reported with the count) or, with --on-long reject, an error.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import math
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from distil_rank.embeddings import EmbeddingSet, embeddings_payload, save_embeddings, split_indices
from distil_rank.errors import (
    InputError,
    OneLineParser,
    cli_exit_code,
    first_line,
    seed_argument,
)
from distil_rank.families import ESM2, FAMILIES, ModelFamily, family_of, releases
from distil_rank.files import check_writable_file, check_writable_folder, write_together
from distil_rank.runtime import add_threads_option, apply_threads, freeze_imports, resolve_device

# 20 standard amino acids, X (unknown), and the ambiguity / rare codes ESM-2's vocabulary has.
AMINO_ACIDS = frozenset("ACDEFGHIKLMNPQRSTVWYXBZUO")


@dataclass
class Record:
    id: str
    sequence: str
    line: int  # line number of the record's header


def read_fasta(path: str | Path) -> list[Record]:
    """Parse a FASTA file strictly: every problem names the record and the line. UTF-8 (a
    byte-order mark is accepted); spaces between blocks of residues and one trailing stop mark
    `*` per record are dropped (a `*` anywhere else is an error)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    records: list[Record] = []
    seen: dict[str, int] = {}
    current: Record | None = None
    chunks: list[tuple[int, str]] = []  # (line number, residues)

    def close():
        if current is None:
            return
        sequence = "".join(residues for _, residues in chunks)
        sequence = sequence[:-1] if sequence.endswith("*") else sequence
        if "*" in sequence:
            at, ends = sequence.index("*"), itertools.accumulate(len(r) for _, r in chunks)
            line = next(number for (number, _), end in zip(chunks, ends) if at < end)
            raise InputError(f"{path}:{line}: record '{current.id}' has a stop mark '*' "
                             "inside its sequence")
        if not sequence:
            raise InputError(f"{path}:{current.line}: record '{current.id}' has an empty sequence")
        current.sequence = sequence
        records.append(current)

    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8").strip()
            except UnicodeDecodeError as err:
                raise InputError(f"{path}:{number}: not UTF-8 text (byte {err.start + 1} of the "
                                 "line)") from None
            if not line:
                continue
            if line.startswith(">"):
                close()
                fields = line[1:].split()
                if not fields:
                    raise InputError(f"{path}:{number}: header with no identifier")
                record_id = fields[0]
                if record_id in seen:
                    raise InputError(f"{path}:{number}: duplicate id '{record_id}' "
                                     f"(first at line {seen[record_id]})")
                seen[record_id] = number
                current, chunks = Record(record_id, "", number), []
                continue
            if current is None:
                raise InputError(f"{path}:{number}: sequence text before the first '>' header")
            residues = "".join(line.split()).upper()  # spaces between blocks of residues
            bad = sorted(set(residues) - AMINO_ACIDS - {"*"})
            if bad:
                raise InputError(f"{path}:{number}: record '{current.id}' has characters outside "
                                 f"the amino-acid alphabet: {''.join(bad)!r}")
            chunks.append((number, residues))
    close()
    if not records:
        raise InputError(f"{path}: no FASTA records (no line starts with '>')")
    return records


def read_labels(path: str | Path, records: list[Record]) -> torch.Tensor:
    """Measured fitness for every FASTA record, from a CSV whose header has the columns `id`
    (the record's id) and `fitness` (others are ignored): one value per record, in the
    records' order. A missing, duplicate, non-numeric or non-finite label is one line naming
    the record and the line; labels for ids not in the FASTA are left out, and counted."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None
    tabs = bool(lines) and "\t" in lines[0] and "," not in lines[0]  # a TSV
    rows = list(csv.reader(lines, delimiter="\t" if tabs else ","))
    header = [cell.strip() for cell in rows[0]] if rows else []
    if "id" not in header or "fitness" not in header:
        hint = " (a ProteinGym table: rename its columns mutant to id and DMS_score to " \
            "fitness)" if "DMS_score" in header else ""
        raise InputError(f"{path}:1: expected a header with the columns id and fitness, found "
                         f"{','.join(header) or 'nothing'}{hint}")
    at_id, at_fitness = header.index("id"), header.index("fitness")
    labels: dict[str, tuple[float, int]] = {}
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(at_id, at_fitness):
            raise InputError(f"{path}:{number}: {len(row)} columns, the header has {len(header)}")
        record_id, text = row[at_id].strip(), row[at_fitness].strip()
        if record_id in labels:
            raise InputError(f"{path}:{number}: a second label for '{record_id}' (first at line "
                             f"{labels[record_id][1]})")
        try:
            value = float(text)
        except ValueError:
            raise InputError(f"{path}:{number}: the fitness of '{record_id}' is {text!r}, not a "
                             "number") from None
        if not math.isfinite(value):
            raise InputError(f"{path}:{number}: the fitness of '{record_id}' is {text}")
        labels[record_id] = (value, number)
    missing = [r for r in records if r.id not in labels]
    if missing:
        more = f" and {len(missing) - 1} other record(s)" if len(missing) > 1 else ""
        raise InputError(f"{path}: no fitness for record '{missing[0].id}' (FASTA line "
                         f"{missing[0].line}){more}")
    extra = len(labels) - len(records)
    if extra:
        print(f"note: {extra} label(s) in {path} name no FASTA record and are not used",
              file=sys.stderr)
    return torch.tensor([labels[r.id][0] for r in records], dtype=torch.float32)


def resolve_model_name(name: str) -> tuple[str, bool]:
    """(what to pass to from_pretrained, whether to read local files only): a local folder, a
    hub model already in the local cache, or a hub model that the hub can be asked for. A hub
    name that is not cached fails at once, in one line, when the hub cannot be reached (offline
    by HF_HUB_OFFLINE or by the network), where transformers would spend half a minute in
    retries first."""
    if Path(name).is_dir():
        return name, True
    known = releases()
    if name in known:
        name = known[name]
    elif not any(f.hub_prefix and name.startswith(f.hub_prefix) for f in FAMILIES.values()):
        raise InputError(f"--model {name!r}: not a local directory nor an ESM-2 name "
                         f"({', '.join(known)})")
    if _cached(name):
        return name, True
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
    if offline or not _hub_reachable():
        why = "HF_HUB_OFFLINE is set" if offline else "the hub (huggingface.co) cannot be reached"
        raise InputError(f"--model {name}: not in the local cache, and {why}: pass a local "
                         "folder of the model (transformers format)")
    return name, False


def _cached(repo: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return isinstance(try_to_load_from_cache(repo, "config.json"), str)


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def load_model(name: str, device: torch.device, dtype: torch.dtype):
    """(tokenizer, model, where it came from, its ModelFamily): `name` a release name, a hub id
    or a local folder of any family in distil_rank/families.py."""
    try:
        from transformers import AutoConfig
        from transformers.utils import logging
    except ImportError:
        raise InputError("the embedding tool needs transformers: "
                         "pip install -r requirements-embed.txt") from None
    source, local = resolve_model_name(name)
    logging.disable_progress_bar()  # the tool's own lines, and an error's, stay the only ones
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=local)
        family = family_of(config.model_type, f"--model {name}")
        tokenizer, model = family.load(source, local)
    except InputError:
        raise
    except Exception as err:  # a corrupt folder fails anywhere inside transformers
        raise InputError(f"--model {name}: could not load ({first_line(err)})") from None
    return tokenizer, model.to(device=device, dtype=dtype).eval(), source, family


def length_batches(lengths: list[int], max_tokens: int, special: int = 2) -> list[list[int]]:
    """Indices grouped longest first so that each padded batch, (rows) x (longest + `special`
    tokens), stays within max_tokens; a sequence longer than the budget goes alone."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches, current, longest = [], [], 0
    for i in order:
        width = lengths[i] + special
        if current and max(longest, width) * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, width)
    if current:
        batches.append(current)
    return batches


@torch.inference_mode()
def embed_sequences(model, tokenizer, sequences: list[str], *, layer: int | None = None,
                    max_tokens: int = 4096, progress: bool = True,
                    family: ModelFamily = ESM2) -> torch.Tensor:
    """Mean-pooled residue embeddings [N, hidden] (float32), in the order of `sequences`."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    n_layers = model.config.num_hidden_layers
    if layer is not None and not 0 <= layer <= n_layers:
        raise InputError(f"--layer {layer}: the model has layers 0..{n_layers}")
    out = torch.empty(len(sequences), model.config.hidden_size)
    batches = length_batches([len(s) for s in sequences], max_tokens, family.special_tokens)
    for batch in tqdm(batches, desc="embedding", unit="batch", disable=None if progress else True):
        tokens = tokenizer([family.text(sequences[i]) for i in batch], padding=True,
                           return_tensors="pt")
        tokens = {k: v.to(device) for k, v in tokens.items()}
        result = model(**tokens, output_hidden_states=layer is not None)
        hidden = result.last_hidden_state if layer is None else result.hidden_states[layer]
        out[torch.tensor(batch)] = residue_mean(hidden, tokens["attention_mask"], family).cpu()
    return out


def residue_mean(hidden: torch.Tensor, attention_mask: torch.Tensor,
                 family: ModelFamily = ESM2) -> torch.Tensor:
    """[batch, tokens, hidden] -> [batch, hidden] (float32): the mean over each sequence's
    residues, which sit after the family's leading special tokens (ESM-2: <cls> at 0, residues
    at 1..L, <eos> at L + 1): no special token, no padding."""
    lengths = attention_mask.sum(1, keepdim=True) - family.special_tokens
    positions = torch.arange(hidden.shape[1], device=hidden.device) - family.leading_tokens
    residue = (positions >= 0) & (positions < lengths)
    return (hidden.float() * residue[..., None]).sum(1) / lengths.clamp_min(1).float()


def within_limit(records: list[Record], model, fasta, reject: bool = False,
                 family: ModelFamily = ESM2):
    """(the sequences cut to the model's limit, the limit, how many were cut): the limit is
    max_position_embeddings less the family's special tokens (ESM-2: <cls> and <eos>); with
    `reject` a cut is refused in one line instead."""
    limit = model.config.max_position_embeddings - family.special_tokens
    long = [r for r in records if len(r.sequence) > limit]
    if long and reject:
        raise InputError(f"{fasta}: {len(long)} sequence(s) longer than the model's limit of "
                         f"{limit} residues (first: '{long[0].id}', {len(long[0].sequence)}, "
                         f"line {long[0].line}); use --on-long truncate to keep their first "
                         f"{limit}")
    return [r.sequence[:limit] for r in records], limit, len(long)


def truncation_note(truncated: int, limit: int) -> None:
    if truncated:
        print(f"note: truncated {truncated} sequence(s) longer than {limit} residues to their "
              f"first {limit}", file=sys.stderr)


def _pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def create_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        description="Mean-pooled ESM-2 embeddings of a FASTA file, in the format main.py reads.")
    p.add_argument("--fasta", required=True, help="input FASTA file")
    p.add_argument("--model", required=True,
                   help=f"an ESM-2 name ({', '.join(ESM2.releases)}) or a local transformers "
                        "directory (of a family in distil_rank/families.py)")
    p.add_argument("--out", required=True,
                   help="output .pt file (its folder must exist); with --split, a folder for "
                        "embeddings_{train,val}.pt (created if missing)")
    p.add_argument("--labels", default=None,
                   help="a CSV (or TSV) with the columns id,fitness (id: the FASTA record's): "
                        "stores the measured fitness with the embeddings, so that the benchmark "
                        "builds its Fitness-Head teacher on your own deep mutational scan")
    p.add_argument("--layer", type=int, default=None,
                   help="hidden layer to pool (0 = token embeddings); default: the final layer")
    p.add_argument("--max-tokens", type=int, default=4096,
                   help="tokens per batch, padding included (default: 4096)")
    p.add_argument("--on-long", choices=("truncate", "reject"), default="truncate",
                   help="sequences longer than the model's limit: keep the first residues "
                        "(the default), or stop")
    p.add_argument("--device", default="auto",
                   help="auto (CUDA when available; the default), cpu, cuda, cuda:N")
    p.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"), default="auto",
                   help="auto: bf16 (or fp16) on CUDA, float32 on the CPU")
    p.add_argument("--split", type=float, default=None,
                   help="fraction for training: write a seeded train/validation pair")
    p.add_argument("--seed", type=seed_argument, default=0,
                   help="seed of the --split shuffle (default: 0)")
    add_threads_option(p)
    return p


def _provenance(args: argparse.Namespace, source: str, dtype, device, truncated: int,
                limit: int) -> dict:
    """What the written embeddings are: the model, layer, pooling, the FASTA's hash, and how."""
    provenance = {
        "model": args.model, "model_source": source,
        "layer": "final" if args.layer is None else args.layer,
        "pooling": "mean over residues (no BOS, EOS or padding)", "fasta": str(args.fasta),
        "fasta_sha256": hashlib.sha256(Path(args.fasta).read_bytes()).hexdigest(),
        "dtype": str(dtype).replace("torch.", ""), "device": str(device),
        "truncated": truncated, "max_residues": limit, "tool": "python -m distil_rank.embed",
    }
    if args.labels is not None:
        provenance["labels"] = str(args.labels)
    return provenance


def run(args: argparse.Namespace) -> list[Path]:
    if args.split is not None and not 0 < args.split < 1:
        raise InputError(f"--split {args.split}: must be between 0 and 1")
    if args.max_tokens < 3:
        raise InputError(f"--max-tokens {args.max_tokens}: too small for one residue")
    apply_threads(args.threads)
    if args.split is None:  # --out is a file of the format written
        check_writable_file(args.out, "--out", (".pt",))
    else:  # --out is a folder for embeddings_train.pt and embeddings_val.pt
        check_writable_folder(args.out, "--out")
    records = read_fasta(args.fasta)
    if args.split is not None and len(records) < 4:
        raise InputError(f"{args.fasta}: {len(records)} records, need at least 4 to split")
    fitness = None if args.labels is None else read_labels(args.labels, records)  # before the model
    device = resolve_device(args.device)
    dtype = _pick_dtype(args.dtype, device)
    tokenizer, model, source, family = load_model(args.model, device, dtype)

    sequences, limit, truncated = within_limit(records, model, args.fasta,
                                               reject=args.on_long == "reject", family=family)
    truncation_note(truncated, limit)
    embeddings = embed_sequences(model, tokenizer, sequences, layer=args.layer,
                                 max_tokens=args.max_tokens, family=family)

    provenance = _provenance(args, source, dtype, device, truncated, limit)
    ids = [r.id for r in records]
    if args.split is None:
        out = Path(args.out)
        save_embeddings(out, EmbeddingSet(embeddings, fitness=fitness, ids=ids,
                                          provenance=provenance))
        return [out]
    train_rows, val_rows = split_indices(len(records), 1 - args.split, args.seed, min_rows=2)
    writers = {}
    for name, rows in (("train", train_rows), ("val", val_rows)):
        payload = embeddings_payload(EmbeddingSet(
            embeddings[rows], fitness=None if fitness is None else fitness[rows],
            ids=[ids[i] for i in rows],
            provenance=dict(provenance, split=name, split_fraction=args.split,
                            split_seed=args.seed)))
        writers[Path(args.out) / f"embeddings_{name}.pt"] = \
            lambda tmp, payload=payload: torch.save(payload, tmp)
    write_together(writers)  # a train file never sits beside a val file of another run
    return list(writers)


def main(argv: list[str] | None = None) -> int:
    args = create_parser().parse_args(argv)

    def body():
        for path in run(args):
            print(f"wrote {path}")

    freeze_imports(argv)
    return cli_exit_code(body)


if __name__ == "__main__":
    sys.exit(main())
