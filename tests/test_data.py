"""The loader: every accepted format, and every bad input named in one clear InputError."""

import pickle

import numpy as np
import pytest
import torch

from distil_rank.benchmark.data import resolve_data, synthetic_embeddings
from distil_rank.embeddings import EmbeddingSet, load_embeddings, save_embeddings, split_indices
from distil_rank.errors import InputError

SYNTH = dict(n_train=300, n_val=100, dim=64, latent_dim=8)


def rows(n=6, d=4, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_shipped_files_are_real_esm2_with_labels(root):
    train = load_embeddings(root / "embeddings_train.pt")
    val = load_embeddings(root / "embeddings_val.pt")
    assert (train.num_rows, val.num_rows) == (4158, 1040)
    assert train.dim == val.dim == 320
    assert train.embeddings.dtype == torch.float32
    assert train.fitness.shape == (4158,) and val.position.shape == (1040,)
    assert train.provenance["model"] == "esm2_t6_8M_UR50D"
    assert "MIT" in train.provenance["license"]
    # disjoint split that covers the source
    assert not set(train.ids) & set(val.ids)
    assert len(set(train.ids) | set(val.ids)) == 5198
    assert (root / "LICENSE-DATA").exists()


def test_dict_round_trip(tmp_path):
    data = EmbeddingSet(rows(), fitness=torch.arange(6.0), position=torch.arange(6),
                        ids=list("abcdef"), provenance={"model": "m"})
    save_embeddings(tmp_path / "e.pt", data)
    back = load_embeddings(tmp_path / "e.pt")
    torch.testing.assert_close(back.embeddings, data.embeddings)
    torch.testing.assert_close(back.fitness, data.fitness)
    assert back.ids == list("abcdef") and back.provenance == {"model": "m"}


def test_bare_tensor_npy_and_npz(tmp_path):
    x = rows()
    torch.save(x.double(), tmp_path / "bare.pt")
    np.save(tmp_path / "a.npy", x.numpy())
    np.savez(tmp_path / "b.npz", emb=x.numpy(), fitness=np.arange(6.0), pos=np.arange(6))
    for name in ("bare.pt", "a.npy", "b.npz"):
        loaded = load_embeddings(tmp_path / name)
        assert loaded.embeddings.dtype == torch.float32
        torch.testing.assert_close(loaded.embeddings, x)
    assert load_embeddings(tmp_path / "b.npz").fitness.tolist() == list(range(6))


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file"),
    ("not_tensor", "expected a 2-D tensor"),
    ("no_key", "no 'embeddings' entry"),
    ("nan", "NaN or Inf (first: row 2)"),
    ("inf", "NaN or Inf"),
    ("one_d", "expected 2-D"),
    ("three_d", "expected 2-D"),
    ("one_row", "need at least 2"),
    ("garbage", "not a tensor file written by torch.save"),
    ("bad_suffix", "unknown file type"),
    ("fitness_length", "'fitness' has 3 values for 6"),
    ("object_npy", "not a readable numpy file"),
])
def test_bad_files(tmp_path, case, message):
    path = tmp_path / "bad.pt"
    x = rows()
    if case == "not_tensor":
        torch.save([1, 2, 3], path)
    elif case == "no_key":
        torch.save({"x": x}, path)
    elif case == "nan":
        x[2, 1] = float("nan")
        torch.save(x, path)
    elif case == "inf":
        x[4, 0] = float("inf")
        torch.save({"embeddings": x}, path)
    elif case == "one_d":
        torch.save(torch.randn(5), path)
    elif case == "three_d":
        torch.save(torch.randn(2, 3, 4), path)
    elif case == "one_row":
        torch.save(torch.randn(1, 8), path)
    elif case == "garbage":
        path.write_bytes(b"this is not a torch file")
    elif case == "bad_suffix":
        path = tmp_path / "bad.csv"
        path.write_text("1,2\n3,4\n")
    elif case == "fitness_length":
        torch.save({"embeddings": x, "fitness": torch.ones(3)}, path)
    elif case == "object_npy":
        path = tmp_path / "bad.npy"
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError) as err:
        load_embeddings(path)
    text = str(err.value)
    assert message in text and str(path) in text and "\n" not in text


def test_a_pickle_that_runs_code_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"embeddings": RunsCode(str(marker))}, f)
    with pytest.raises(InputError, match="refused to unpickle"):
        load_embeddings(path)
    assert not marker.exists()
    # the same payload inside torch.save's zip format
    torch.save({"embeddings": RunsCode(str(marker))}, path)
    with pytest.raises(InputError, match="refused to unpickle"):
        load_embeddings(path)
    assert not marker.exists()


def test_only_one_default_file_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save(rows(), "embeddings_train.pt")
    with pytest.raises(InputError, match="embeddings_val.pt: no such file, but its partner"):
        resolve_data("embeddings_train.pt", "embeddings_val.pt", "auto",
                     ("embeddings_train.pt", "embeddings_val.pt"), SYNTH, seed=0,
                     shipped=tmp_path / "nowhere")


def test_both_defaults_absent_means_synthetic_and_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    nowhere = tmp_path / "nowhere"
    data = resolve_data("embeddings_train.pt", "embeddings_val.pt", "auto",
                        ("embeddings_train.pt", "embeddings_val.pt"), SYNTH, seed=0,
                        shipped=nowhere)
    assert not data.real_data and "SYNTHETIC" in data.note
    assert str(tmp_path.resolve()) in data.note and str(nowhere) in data.note  # where it looked
    with pytest.raises(InputError, match="no such file"):
        resolve_data("embeddings_train.pt", "embeddings_val.pt", "real",
                     ("embeddings_train.pt", "embeddings_val.pt"), SYNTH, seed=0,
                     shipped=nowhere)


def test_the_shipped_files_are_found_from_any_folder(tmp_path, monkeypatch, root):
    monkeypatch.chdir(tmp_path)  # holds no embedding file: the clone's root does
    data = resolve_data("embeddings_train.pt", "embeddings_val.pt", "auto",
                        ("embeddings_train.pt", "embeddings_val.pt"), SYNTH, seed=0)
    assert data.real_data
    assert str(root.resolve() / "embeddings_train.pt") in data.note
    assert data.train.num_rows == load_embeddings(root / "embeddings_train.pt").num_rows
    # files in the working directory come first, and then both must be there
    torch.save(rows(), "embeddings_train.pt")
    with pytest.raises(InputError, match="embeddings_val.pt: no such file, but its partner"):
        resolve_data("embeddings_train.pt", "embeddings_val.pt", "auto",
                     ("embeddings_train.pt", "embeddings_val.pt"), SYNTH, seed=0)


def test_dimension_mismatch(tmp_path):
    torch.save(rows(d=4), tmp_path / "a.pt")
    torch.save(rows(d=5), tmp_path / "b.pt")
    with pytest.raises(InputError, match="dimension 5 differs"):
        resolve_data(str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "auto",
                     ("embeddings_train.pt", "embeddings_val.pt"), SYNTH, seed=0)


def test_synthetic_data_looks_like_embeddings_and_is_seeded():
    train, val = synthetic_embeddings(n_train=2000, n_val=500, dim=256, latent_dim=16, seed=0)
    again, _ = synthetic_embeddings(n_train=2000, n_val=500, dim=256, latent_dim=16, seed=0)
    other, _ = synthetic_embeddings(n_train=2000, n_val=500, dim=256, latent_dim=16, seed=1)
    assert torch.equal(train.embeddings, again.embeddings)
    assert not torch.equal(train.embeddings, other.embeddings)
    x = train.embeddings.double()
    mean = x.mean(0)
    spread = (x - mean).norm(dim=1).mean()
    assert mean.norm() > 5 * spread  # a large common mean
    eig = torch.linalg.eigvalsh(torch.cov(x.T)).flip(0)
    assert eig[:16].sum() / eig.sum() > 0.95  # low intrinsic dimension
    assert eig[0] > 5 * eig[10]  # a decaying spectrum
    assert val.num_rows == 500 and train.provenance["source"] == "synthetic"


def test_split_indices_partition():
    kept, held = split_indices(100, 0.15, seed=3)
    assert len(held) == 15 and len(kept) == 85
    assert sorted(kept.tolist() + held.tolist()) == list(range(100))
    assert torch.equal(held, split_indices(100, 0.15, seed=3)[1])
