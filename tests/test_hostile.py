"""Hostile and unusual input to the three command lines and the API. For every case: exit code
2, exactly one `error:` line, no traceback, and the output folder byte for byte as it was; for
the API a ValueError or OSError naming the file or layer, and the caller's model untouched."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from torch import nn

from distil_rank import calibrate, embed
from distil_rank.api import compress_linear, compress_model, load_compressed, save_compressed
from distil_rank.benchmark import cli as main
from distil_rank.benchmark.report import FIGURE_NAME, SUMMARY_NAME
from distil_rank.distill import DistillSettings
from distil_rank.lowrank import LowRankLinear


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def run_cli(entry, argv, capsys):
    capsys.readouterr()
    try:
        code = entry(argv)
    except SystemExit as done:  # argparse's own exit, through OneLineParser
        code = done.code
    return code, capsys.readouterr().err


def assert_refused(entry, argv, out, capsys, case):
    before = snapshot(out)
    code, err = run_cli(entry, argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2, (case, code, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), (case, err)
    assert "Traceback" not in err, case
    assert snapshot(out) == before, case
    return lines[0]


@pytest.fixture
def old_results(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / SUMMARY_NAME).write_text('{"previous": true}')
    (out / FIGURE_NAME).write_bytes(b"\x89PNG previous figure")
    return out


# ----------------------------------------------------------------------------- main.py


def main_cases(tmp, root):
    x = torch.load(root / "embeddings_train.pt", weights_only=True)["embeddings"][:200]

    def save(name, obj):
        torch.save(obj, tmp / name)
        return str(tmp / name)

    def npy(name, array):
        np.save(tmp / name, array, allow_pickle=True)
        return str(tmp / name)

    val = save("val.pt", x[:50])
    (tmp / "empty.pt").write_bytes(b"")
    (tmp / "junk.npz").write_bytes(b"PK\x03\x04 not a zip")
    raw = (root / "embeddings_val.pt").read_bytes()
    (tmp / "cut.pt").write_bytes(raw[: len(raw) // 2])
    (tmp / "text.pt").write_text("id,fitness\nP1,0.3\n")
    np.savez(tmp / "objects.npz", embeddings=np.array([None, {}], dtype=object))
    files = {
        "same rows": save("same.pt", x[:1].repeat(100, 1)),
        "huge values": save("huge.pt", x * 1e20),
        "complex": npy("complex.npy", np.ones((10, 4), dtype=np.complex64)),
        "booleans": npy("bool.npy", np.ones((10, 4), dtype=bool)),
        "strings": npy("str.npy", np.full((10, 4), "a")),
        "dates": npy("dates.npy", np.zeros((10, 4), dtype="M8[s]")),
        "records": npy("rec.npy", np.zeros((10, 4), dtype=[("a", "f4")])),
        "objects": npy("obj.npy", np.array([None, {}], dtype=object)),
        "sparse": save("sparse.pt", x.to_sparse()),
        "quantized": save("q.pt", torch.quantize_per_tensor(x, 0.1, 0, torch.qint8)),
        "scalar": save("scalar.pt", torch.tensor(1.0)),
        "3-d": save("cube.pt", x.reshape(10, 20, 320)),
        "no columns": save("nocols.pt", torch.zeros(5, 0)),
        "no rows": save("norows.pt", torch.zeros(0, 320)),
        "a list": save("list.pt", {"embeddings": x.tolist()}),
        "short fitness": save("fit.pt", {"embeddings": x, "fitness": torch.ones(3)}),
        "text fitness": save("fitstr.pt", {"embeddings": x, "fitness": ["a"] * 200}),
        "NaN": save("nan.pt", torch.where(torch.rand_like(x) < 0.01, float("nan"), x)),
        "empty file": str(tmp / "empty.pt"),
        "cut file": str(tmp / "cut.pt"),
        "not a zip": str(tmp / "junk.npz"),
        "a folder": str(tmp),
        "missing": str(tmp / "nope.pt"),
        "unknown suffix": save("x.csv", x),
        "text named .pt": str(tmp / "text.pt"),
        "object array in an npz": str(tmp / "objects.npz"),
        "meta-device tensor": save("meta.pt", {"embeddings": torch.empty(20, 8, device="meta")}),
    }
    cases = {name: ["--train", path, "--val", val] for name, path in files.items()}
    train = str(root / "embeddings_train.pt")
    cases.update({
        "rank text": ["--rank", "abc"], "rank 2.5": ["--rank", "2.5"], "rank 0": ["--rank", "0"],
        "rank D": ["--train", train, "--val", val, "--rank", "320"],
        "no seeds": ["--seeds", "0"], "negative steps": ["--steps", "-3"],
        "seeds beyond memory": ["--train", train, "--val", val, "--seeds", "10000000"],
        "no threads": ["--threads", "0"],
        "device": ["--device", "cuda:abc"], "device word": ["--device", "banana"],
        "preset": ["--preset", "nope"], "unknown flag": ["--frobnicate"],
        "out is a file": ["--out", str(root / "README.md")],
        "out unwritable": ["--out", "/proc/no/such/place"],
        "dimensions differ": ["--train", train, "--val", save("d7.pt", torch.randn(9, 7))],
        "the same file as --train and --val": ["--train", train, "--val", train],
    })
    zero = tmp / "zero.pt"  # a device: reading it never ends
    zero.symlink_to("/dev/zero")
    fifo = tmp / "fifo.pt"  # a FIFO: opening it waits for a writer
    os.mkfifo(fifo)
    cases["a /dev/zero symlink"] = ["--train", str(zero), "--val", val]
    cases["a FIFO"] = ["--train", str(fifo), "--val", val]
    if not torch.cuda.is_available():
        cases["no cuda"] = ["--device", "cuda"]
    return cases


def test_main_refuses_hostile_input_in_one_line(tmp_path, root, old_results, capsys):
    for case, argv in main_cases(tmp_path, root).items():
        if "--out" not in argv:
            argv = [*argv, "--out", str(old_results)]
        assert_refused(main.main, ["--quick", "--no-sweep", "--seeds", "1", *argv], old_results,
                       capsys, case)


def test_unusual_but_valid_files_run(tmp_path, root, capsys):
    """Every numeric dtype and byte order, tensors saved with requires_grad, values in
    provenance that JSON cannot hold: accepted (converted), and the run finishes."""
    x = torch.load(root / "embeddings_train.pt", weights_only=True)["embeddings"][:150] * 10
    np.save(tmp_path / "train.npy", x.numpy().astype(">f8"))  # big-endian float64
    torch.save({"embeddings": x[:60].to(torch.bfloat16).requires_grad_(False),
                "provenance": {"raw": b"\x00\x01", "tensor": torch.ones(2)}}, tmp_path / "v.pt")
    out = tmp_path / "out"
    code, err = run_cli(main.main, ["--quick", "--no-sweep", "--seeds", "1", "--out", str(out),
                                    "--train", str(tmp_path / "train.npy"),
                                    "--val", str(tmp_path / "v.pt")], capsys)
    assert code == 0, err
    assert json.loads((out / SUMMARY_NAME).read_text())["input_dim"] == 320


def test_validation_rows_that_do_not_vary_give_null_with_a_reason_and_a_figure(tmp_path, root,
                                                                               capsys):
    x = torch.load(root / "embeddings_train.pt", weights_only=True)["embeddings"][:200]
    torch.save(x, tmp_path / "t.pt")
    torch.save(x[:1].repeat(40, 1), tmp_path / "v.pt")
    out = tmp_path / "out"
    code, err = run_cli(main.main, ["--quick", "--no-sweep", "--seeds", "1", "--out", str(out),
                                    "--train", str(tmp_path / "t.pt"),
                                    "--val", str(tmp_path / "v.pt")], capsys)
    assert code == 0, err
    summary = json.loads((out / SUMMARY_NAME).read_text())
    assert summary["Random"]["methods"]["data_aware"]["explained_variance"] is None
    assert "does not vary" in summary["undefined"]["explained_variance"]
    assert (out / FIGURE_NAME).read_bytes()[:4] == b"\x89PNG"
    headline = summary["headline"]  # in words: never nan
    assert "not computable" in headline and not re.search(r"\bnan\b", headline, re.I)


# ----------------------------------------------------------------------------- writing a pair


def test_a_failure_between_the_two_writes_leaves_the_old_pair(tmp_path, root, old_results,
                                                              monkeypatch, capsys):
    from distil_rank import files

    real_replace = os.replace
    calls = []

    def second_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("disk full (injected)")
        return real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", second_fails)
    before = snapshot(old_results)
    with pytest.raises(OSError, match="injected"):
        main.main(["--quick", "--no-sweep", "--seeds", "1", "--out", str(old_results)])
    assert len(calls) >= 2  # the JSON was swapped in, the figure's swap failed
    assert snapshot(old_results) == before  # and the JSON was rolled back: the old pair, only


def test_a_figure_that_cannot_be_drawn_leaves_the_old_pair(root, old_results, monkeypatch):
    from distil_rank.benchmark import report

    def broken(*args):
        raise RuntimeError("cannot draw (injected)")

    monkeypatch.setattr(report, "render_figure", broken)
    before = snapshot(old_results)
    with pytest.raises(RuntimeError, match="injected"):
        main.main(["--quick", "--no-sweep", "--seeds", "1", "--out", str(old_results)])
    assert snapshot(old_results) == before


def test_sigterm_during_a_run_leaves_the_old_pair_and_no_temporary(root, old_results):
    before = snapshot(old_results)
    proc = subprocess.Popen([sys.executable, "main.py", "--quick", "--out", str(old_results)],
                            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in proc.stdout:  # ready: its handler is in place and the work has begun
        if "closed forms and warm starts" in line:
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert snapshot(old_results) == before


# ----------------------------------------------------------------------------- the embedding tool


def test_the_embedding_tool_refuses_hostile_input_in_one_line(tmp_path, old_results, capsys):
    transformers = pytest.importorskip("transformers")
    good = tmp_path / "good.fasta"
    good.write_text(">a\nMKTAYIAK\n>b\nGAVLIW\n>c\nMKV\n>d\nAC\n")
    fastas = {
        "latin-1": b">a\nMKT\xe9\n",
        "stop inside, wrapped": b">a\nMK*\nTAY\n",
        "stop inside a line": b">a\nMK*TAY\n",
        "no records": b"MKTAY\n",
        "empty sequence": b">a\n>b\nMK\n",
        "duplicate ids": b">a\nMK\n>a\nTA\n",
        "bad letters": b">a\nMK9TAY\n",
        "stop on a later line": b">a\nMKT\nAY*W\nGG\n",
    }
    cases = {}
    for name, content in fastas.items():
        path = tmp_path / f"{len(cases)}.fasta"
        path.write_bytes(content)
        cases[name] = ["--fasta", str(path), "--model", str(tmp_path), "--out",
                       str(old_results / "e.pt")]
    empty_model = tmp_path / "empty_model"
    empty_model.mkdir()
    broken_model = tmp_path / "broken_model"
    broken_model.mkdir()
    (broken_model / "config.json").write_text("{not json")
    bert = tmp_path / "bert"
    transformers.BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=16).save_pretrained(bert)
    out_file = ["--out", str(old_results / "e.pt")]
    common = ["--fasta", str(good), "--model", str(empty_model)]
    cases.update({
        "empty model folder": common + out_file,
        "corrupt model folder": ["--fasta", str(good), "--model", str(broken_model), *out_file],
        "not an ESM-2 model": ["--fasta", str(good), "--model", str(bert), *out_file],
        "unknown model name": ["--fasta", str(good), "--model", "esm3_huge", *out_file],
        "device": [*common, *out_file, "--device", "tpu"],
        "device index": [*common, *out_file, "--device", "cuda:abc"],
        "out is a folder": [*common, "--out", str(old_results)],
        "out folder missing": [*common, "--out", str(tmp_path / "no" / "e.pt")],
        "out suffix": [*common, "--out", str(old_results / "e.npy")],
        "split into a file": [*common, "--out", str(old_results / SUMMARY_NAME), "--split", "0.8"],
        "split out of range": [*common, *out_file, "--split", "1.5"],
        "max tokens": [*common, *out_file, "--max-tokens", "0"],
        "missing fasta": ["--fasta", str(tmp_path / "none.fasta"), "--model", "x", *out_file],
        "dtype": [*common, *out_file, "--dtype", "float8"],
    })
    for case, argv in cases.items():
        line = assert_refused(embed.main, argv, old_results, capsys, case)
        if case == "stop on a later line":  # the line that holds the '*', not the header's
            assert f"{cases[case][1]}:3: record 'a' has a stop mark" in line


def test_fasta_with_a_byte_order_mark_and_a_wrapped_stop_mark(tmp_path):
    path = tmp_path / "bom.fasta"
    path.write_bytes(b"\xef\xbb\xbf>a one\nMKTA\nYIAK*\n>b\nGAV*\n")
    records = embed.read_fasta(path)
    assert [(r.id, r.sequence) for r in records] == [("a", "MKTAYIAK"), ("b", "GAV")]
    wrapped = tmp_path / "wrapped.fasta"
    wrapped.write_bytes(b">a\nMKTAYIAK\n*\n")  # the stop mark alone on the last line
    assert embed.read_fasta(wrapped)[0].sequence == "MKTAYIAK"


# ----------------------------------------------------------------------------- calibration


def test_the_calibration_tool_refuses_hostile_input_in_one_line(tmp_path, old_results, capsys,
                                                                  monkeypatch):
    good = np.random.default_rng(0).normal(size=(40, 6))
    shards = {
        "booleans": np.ones((5, 6), dtype=bool), "complex": np.ones((5, 6), dtype=np.complex64),
        "strings": np.full((5, 6), "a"), "dates": np.zeros((5, 6), dtype="M8[s]"),
        "records": np.zeros((5, 6), dtype=[("a", "f4")]), "1-d": np.ones(6),
        "3-d": np.ones((2, 3, 6)), "no columns": np.ones((5, 0)), "no rows": np.ones((0, 6)),
        "narrower": np.ones((5, 4)),
    }
    np.save(tmp_path / "good.npy", good)
    out = ["--out", str(old_results / "m.pt")]
    cases = {}
    for name, array in shards.items():
        np.save(tmp_path / f"{len(cases)}.npy", array)
        cases[name] = ["--shards", str(tmp_path / "good.npy"), str(tmp_path / f"{len(cases)}.npy"),
                       *out]
    np.save(tmp_path / "objects.npy", np.array([None, {}], dtype=object), allow_pickle=True)
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY junk")
    with open(tmp_path / "cut.npy", "wb") as f:
        np.save(f, good)
    (tmp_path / "cut.npy").write_bytes((tmp_path / "cut.npy").read_bytes()[:-50])
    shards_ok = ["--shards", str(tmp_path / "good.npy")]
    cases.update({
        "objects": ["--shards", str(tmp_path / "objects.npy"), *out],
        "junk": ["--shards", str(tmp_path / "junk.npy"), *out],
        "truncated": ["--shards", str(tmp_path / "cut.npy"), *out],
        "no match": ["--shards", str(tmp_path / "none*.npy"), *out],
        "unknown suffix": ["--shards", str(root_file := tmp_path / "x.csv"), *out],
        "batch rows": [*shards_ok, *out, "--batch-rows", "0"],
        "out is a folder": [*shards_ok, "--out", str(old_results)],
        "out folder missing": [*shards_ok, "--out", str(tmp_path / "no" / "m.pt")],
        "out suffix": [*shards_ok, "--out", str(old_results / "m.txt")],
        "batch rows text": [*shards_ok, *out, "--batch-rows", "many"],
    })
    root_file.write_text("1,2\n")
    for case, argv in cases.items():
        assert_refused(calibrate.main, argv, old_results, capsys, case)
    for value in ("2", "abc"):  # neither one process nor torchrun
        monkeypatch.setenv("WORLD_SIZE", value)
        for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
            monkeypatch.delenv(key, raising=False)
        line = assert_refused(calibrate.main, [*shards_ok, *out], old_results, capsys, value)
        assert "WORLD_SIZE" in line


def test_every_numeric_dtype_and_byte_order_calibrates_to_the_same_moments(tmp_path):
    from distil_rank.moments import input_moments, load_moments

    x = np.random.default_rng(1).integers(-50, 50, size=(300, 5))
    reference = input_moments(torch.from_numpy(x.astype(np.float64)))
    for dtype in ("<f4", ">f4", ">f8", "<f2", ">i2", "u1", "<i8", "f8"):
        values = x - x.min() if dtype == "u1" else x
        np.save(tmp_path / "s.npy", values.astype(dtype))
        assert calibrate.main(["--shards", str(tmp_path / "s.npy"), "--out",
                               str(tmp_path / "m.pt"), "--batch-rows", "64"]) == 0, dtype
        moments = load_moments(tmp_path / "m.pt")
        torch.testing.assert_close(moments.covariance, reference.covariance, rtol=1e-9,
                                   atol=1e-9, msg=dtype)


# ----------------------------------------------------------------------------- the API


class Head(nn.Module):
    def __init__(self, width=12):
        super().__init__()
        self.proj = nn.Linear(10, width)
        self.out = nn.Linear(width, 3)

    def forward(self, x):
        return self.out(torch.relu(self.proj(x)))


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, \
        {n: type(m).__name__ for n, m in model.named_modules()}


def test_load_compressed_is_all_or_nothing(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = Head()
    compress_model(model, [torch.randn(64, 10)], layers=["proj"], rank=3)
    saved = tmp_path / "m.safetensors"
    save_compressed(model, saved)
    raw = saved.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(raw[: len(raw) - 40])
    (tmp_path / "junk.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{junk}")
    save_file({"w": torch.ones(2)}, str(tmp_path / "foreign.safetensors"))
    save_file({"w": torch.ones(2)}, str(tmp_path / "badmeta.safetensors"),
              metadata={"distil_rank.lowrank_layers": "{not json"})
    nan_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    nan_state["proj.up"][0, 0] = float("nan")
    save_file(nan_state, str(tmp_path / "nan.safetensors"), metadata={
        "distil_rank.lowrank_layers": json.dumps({"proj": {"in_features": 10, "out_features": 12,
                                                            "rank": 3, "bias": True}})})
    huge = dict(nan_state, **{"proj.up": torch.zeros(12, 3)})
    save_file(huge, str(tmp_path / "lies.safetensors"), metadata={
        "distil_rank.lowrank_layers": json.dumps({"proj": {"in_features": 10, "out_features": 12,
                                                            "rank": 9, "bias": True}})})
    cases = {
        "a wider model": (Head(width=14), saved, ValueError, "12 in the file but"),
        "cut short": (Head(), tmp_path / "cut.safetensors", ValueError, "cut.safetensors"),
        "junk": (Head(), tmp_path / "junk.safetensors", ValueError, "junk.safetensors"),
        "foreign": (Head(), tmp_path / "foreign.safetensors", ValueError, "no distil_rank"),
        "bad metadata": (Head(), tmp_path / "badmeta.safetensors", ValueError, "corrupt"),
        "NaN": (Head(), tmp_path / "nan.safetensors", ValueError, "NaN"),
        "declared sizes": (Head(), tmp_path / "lies.safetensors", ValueError, "proj"),
        "missing": (Head(), tmp_path / "none.safetensors", OSError, "none.safetensors"),
    }
    for case, (fresh, path, error, message) in cases.items():
        before = state(fresh)
        with pytest.raises(error, match=message):
            load_compressed(fresh, path)
        after = state(fresh)
        assert after[1] == before[1], case  # no layer was replaced
        assert all(torch.equal(before[0][k], after[0][k]) for k in before[0]), case
    with pytest.raises(OSError, match="does not exist"):
        save_compressed(model, tmp_path / "no" / "folder" / "m.safetensors")
    loaded = load_compressed(Head(), saved)
    assert isinstance(loaded.proj, LowRankLinear)


def test_compress_refuses_bad_calibration_naming_the_layer():
    torch.manual_seed(1)
    layer = nn.Linear(10, 12)
    x = torch.randn(50, 10)
    bad = x.clone()
    bad[3, 3] = float("inf")
    with pytest.raises(ValueError, match=r"Linear\(10 -> 12\): calibration data holds NaN"):
        compress_linear(layer, bad, rank=3)
    with pytest.raises(ValueError, match=r"Linear\(10 -> 12\): calibration rows of shape"):
        compress_linear(layer, torch.randn(50, 9), rank=3)
    with pytest.raises(ValueError, match="rank 2.5 is not an integer"):
        compress_linear(layer, x, rank=2.5)
    model = Head()
    with pytest.raises(ValueError, match="layer 'proj': calibration data holds NaN"):
        compress_model(model, [bad], layers=["proj"], rank=3)
    with pytest.raises(ValueError, match="layer 'proj': rank"):
        compress_model(model, [x], layers=["proj"], rank={"proj": 3.5})
    assert isinstance(model.proj, nn.Linear)


def test_main_says_in_plain_words_what_a_file_that_is_not_a_tensor_file_is(tmp_path, root,
                                                                           old_results, capsys):
    text = tmp_path / "notes.pt"
    text.write_text("id,fitness\nP1,0.3\n")
    line = assert_refused(main.main, ["--quick", "--train", str(text), "--val",
                                      str(root / "embeddings_val.pt"),
                                      "--out", str(old_results)], old_results, capsys, "text")
    assert "not a tensor file written by torch.save" in line
    assert "weights_only" not in line  # never the advice to load it unsafely


def test_the_api_refuses_layers_and_settings_it_cannot_use_with_the_promised_types():
    torch.manual_seed(2)
    x = torch.randn(80, 6)
    with pytest.raises(TypeError, match="takes an nn.Linear, got Conv1d"):
        compress_linear(nn.Conv1d(6, 6, 1), x, rank=2)
    broken = nn.Linear(6, 6)
    with torch.no_grad():
        broken.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"Linear\(6 -> 6\): its weight or bias holds NaN"):
        compress_linear(broken, x, rank=2)
    layer = nn.Linear(6, 6)
    with pytest.raises(ValueError, match="refine_settings.batch_size = 0"):
        compress_linear(layer, x, rank=2, refine_steps=5,
                        refine_settings=DistillSettings(batch_size=0))
    for fraction in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="holdout_fraction"):
            compress_linear(layer, x, rank=2, refine_steps=5, holdout_fraction=fraction)
    from distil_rank import InputError
    assert issubclass(InputError, ValueError)  # what the README promises API callers



def test_validation_rows_that_are_also_training_rows_are_counted_and_warned(tmp_path, capsys):
    torch.manual_seed(3)
    train = torch.randn(120, 16)
    val = torch.cat([train[:7], torch.randn(53, 16)])  # 7 rows copied from training
    torch.save({"embeddings": train}, tmp_path / "train.pt")
    torch.save({"embeddings": val}, tmp_path / "val.pt")
    out = tmp_path / "out"
    code, err = run_cli(main.main, ["--quick", "--no-sweep", "--seeds", "1", "--train",
                                    str(tmp_path / "train.pt"), "--val", str(tmp_path / "val.pt"),
                                    "--out", str(out), "--quiet"], capsys)
    assert code == 0, err
    assert "warning: 7 of 60 validation rows are also training rows" in err
    summary = json.loads((out / SUMMARY_NAME).read_text())
    assert summary["data"]["val"]["rows_also_in_train"] == 7


def test_the_embedding_tool_fails_at_once_on_a_hub_model_it_cannot_have(tmp_path, capsys,
                                                                      monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # and an empty cache: the model cannot be had
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    fasta = tmp_path / "p.fasta"
    fasta.write_text(">p1\nMKTAYIAKQR\n")
    started = time.perf_counter()
    line = assert_refused(embed.main, ["--fasta", str(fasta), "--model", "esm2_t6_8M_UR50D",
                                       "--out", str(tmp_path / "e.pt")], tmp_path, capsys,
                          "offline hub name")
    assert time.perf_counter() - started < 10  # no retries against a hub it cannot reach
    assert "not in the local cache" in line and "HF_HUB_OFFLINE" in line


def test_the_memory_check_counts_sixteen_bytes_a_teacher_weight_per_seed():
    from distil_rank.benchmark.pipeline import check_memory
    from distil_rank.errors import InputError

    check_memory(4, 100, total=2 * 16 * 4 * 100 * 100)  # exactly half: allowed
    with pytest.raises(InputError, match=r"--seeds 4: .* D = 100"):
        check_memory(4, 100, total=2 * 16 * 4 * 100 * 100 - 1)

