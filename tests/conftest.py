import importlib.util
import os
from pathlib import Path

# Correctness tests run single-threaded, and so do the processes they start (which inherit the
# variable): on a busy machine, threads that fight other processes for the cores cost 6-30x.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


def load_script(relative: str):
    """A script of the repository (bench/, scripts/) as a module, loaded from its file: scripts
    are not a package, and nothing is put on sys.path."""
    spec = importlib.util.spec_from_file_location(relative.replace("/", "_")[:-3], ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def correlated_inputs(n: int, dim: int, seed: int, mean_scale: float = 3.0) -> torch.Tensor:
    """Inputs with a common mean and a decaying, correlated spectrum (like embeddings)."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    scales = torch.logspace(0, -2, dim, dtype=torch.float64)
    mean = mean_scale * torch.randn(dim, generator=g, dtype=torch.float64)
    return mean + (torch.randn(n, dim, generator=g, dtype=torch.float64) * scales) @ mixing.T


ESM_VOCAB = ["<cls>", "<pad>", "<eos>", "<unk>", "L", "A", "G", "V", "S", "E", "R", "T", "I",
             "D", "P", "K", "Q", "N", "F", "Y", "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".",
             "-", "<null_1>", "<mask>"]


def build_tiny_esm(folder: Path) -> Path:
    """A tiny randomly initialised ESM-2 (2 layers, 16 wide) and its tokenizer, saved in
    `folder` as a local transformers folder: no ESM-2 weights can be had here."""
    import transformers

    (folder / "vocab.txt").write_text("\n".join(ESM_VOCAB))
    tokenizer = transformers.EsmTokenizer(str(folder / "vocab.txt"))
    config = transformers.EsmConfig(
        vocab_size=len(ESM_VOCAB), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=22, position_embedding_type="rotary",
        pad_token_id=1, mask_token_id=32, token_dropout=True, emb_layer_norm_before=False)
    torch.manual_seed(0)
    model = transformers.EsmModel(config, add_pooling_layer=False)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def epoch_batches(rows: int, batch_size: int, generator: torch.Generator):
    """The plain loop the schedule must equal: endless batches, a permutation per epoch, a
    batch that would straddle two epochs starting the next one instead."""
    batch_size = min(batch_size, rows)
    while True:
        order = torch.randperm(rows, generator=generator)
        for start in range(0, rows - batch_size + 1, batch_size):
            yield order[start:start + batch_size]
