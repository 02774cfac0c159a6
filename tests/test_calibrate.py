import numpy as np
import pytest
import torch
from torch import nn

from conftest import correlated_inputs
from distil_rank.api import compress_linear
from distil_rank.calibrate import accumulate_shards, main, shards_for_process
from distil_rank.errors import InputError
from distil_rank.lowrank import compress_data_aware
from distil_rank.moments import input_moments, load_moments


def test_streamed_shards_match_in_memory_and_feed_the_api(tmp_path):
    x = correlated_inputs(1500, 20, seed=0, mean_scale=30.0).float()
    np.save(tmp_path / "a.npy", x[:700].numpy())
    np.savez(tmp_path / "b.npz", emb=x[700:1000].numpy())
    torch.save(x[1000:], tmp_path / "c.pt")
    assert main(["--shards", str(tmp_path / "*.np?"), str(tmp_path / "c.pt"),
                 "--out", str(tmp_path / "m.pt"), "--batch-rows", "128"]) == 0
    moments = load_moments(tmp_path / "m.pt")
    reference = input_moments(x)
    assert moments.count == 1500
    torch.testing.assert_close(moments.covariance, reference.covariance, rtol=1e-9, atol=1e-10)
    torch.manual_seed(0)
    layer = nn.Linear(20, 20)
    streamed = compress_linear(layer, moments, rank=5)
    in_memory = compress_data_aware(layer, x, 5)
    with torch.no_grad():
        torch.testing.assert_close(streamed(x), in_memory(x), atol=1e-4, rtol=1e-4)


def test_shards_are_dealt_round_robin():
    paths = [f"s{i}.npy" for i in range(5)]
    assert shards_for_process(paths, 0, 2) == ["s0.npy", "s2.npy", "s4.npy"]
    assert shards_for_process(paths, 1, 2) == ["s1.npy", "s3.npy"]


def test_bad_shards(tmp_path, capsys):
    good = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    np.save(tmp_path / "good.npy", good)
    np.save(tmp_path / "wide.npy", np.zeros((5, 9), dtype=np.float32))
    nan = good.copy()
    nan[37, 2] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "empty.npy", np.zeros((0, 8), dtype=np.float32))
    torch.save(torch.zeros(0, 8), tmp_path / "empty.pt")
    cases = {
        "wide.npy": "dimension 9 differs from",
        "nan.npy": "row 37 holds NaN or Inf",
        "empty.npy": "empty shard (0 rows)",
        "empty.pt": "empty (0 rows)",
    }
    for name, message in cases.items():
        with pytest.raises(InputError) as err:
            accumulate_shards([str(tmp_path / "good.npy"), str(tmp_path / name)], batch_rows=16)
        assert message in str(err.value) and name in str(err.value)
    # the NaN row is found in a later batch too (row 37 lies in the third batch of 16)
    out = tmp_path / "m.pt"
    assert main(["--shards", str(tmp_path / "nan.npy"), "--out", str(out),
                 "--batch-rows", "16"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nan.npy: row 37" in err and not out.exists()
    assert main(["--shards", str(tmp_path / "none*.npy"), "--out", str(out)]) == 2
    capsys.readouterr()
    # a shard named twice (here once by name, once by a pattern) would count its rows twice
    assert main(["--shards", str(tmp_path / "good.npy"), str(tmp_path / "g*.npy"),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "good.npy: given twice" in err and not out.exists()
