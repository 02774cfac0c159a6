"""The embedding tool, offline, on a tiny randomly initialised ESM-2 built here from a config."""

import importlib.util
import json

import pytest
import torch

from conftest import build_tiny_esm
from distil_rank import families
from distil_rank.embed import length_batches, main, read_fasta, read_labels
from distil_rank.embeddings import load_embeddings
from distil_rank.errors import InputError

pytestmark = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                reason="transformers is not installed")  # imported where used

SEQUENCES = {"p1": "MKTAYIAKQR", "p2": "GAVLI", "p3": "MSTNPKPQRKTKRNTNRRPQDVKFPGG",
             "p4": "AC", "p5": "WWYHHE", "p6": "MKVLAAGIV"}


@pytest.fixture(scope="module")
def tiny_esm(tmp_path_factory):
    return build_tiny_esm(tmp_path_factory.mktemp("tiny_esm"))


@pytest.fixture
def fasta(tmp_path):
    path = tmp_path / "proteins.fasta"
    path.write_text("".join(f">{k} some description\n{v[:4]}\n{v[4:]}\n" if len(v) > 4
                            else f">{k}\n{v}\n" for k, v in SEQUENCES.items()))
    return path


def hand_pooled(folder, sequence, layer=None):
    """One sequence alone (no padding, no sorting): mean over its residue positions 1..L."""
    import transformers
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.EsmModel.from_pretrained(folder, add_pooling_layer=False).eval()
    tokens = tokenizer([sequence], return_tensors="pt")
    with torch.no_grad():
        out = model(**tokens, output_hidden_states=True)
    hidden = out.last_hidden_state if layer is None else out.hidden_states[layer]
    assert hidden.shape[1] == len(sequence) + 2
    return hidden[0, 1:len(sequence) + 1].mean(0)


def test_pooling_and_order_match_a_hand_computation(tiny_esm, fasta, tmp_path):
    out = tmp_path / "emb.pt"
    # a tiny token budget forces several length-sorted batches with padding
    assert main(["--fasta", str(fasta), "--model", str(tiny_esm), "--out", str(out),
                 "--max-tokens", "40"]) == 0
    data = load_embeddings(out)  # main.py's loader reads it
    assert data.ids == list(SEQUENCES)
    assert data.embeddings.shape == (len(SEQUENCES), 16)
    limit = 22 - 2
    for row, seq in enumerate(SEQUENCES.values()):
        expected = hand_pooled(tiny_esm, seq[:limit])
        torch.testing.assert_close(data.embeddings[row], expected, atol=1e-5, rtol=1e-5)
    assert data.provenance["truncated"] == 1  # p3 is longer than 20 residues
    assert data.provenance["pooling"].startswith("mean over residues")


def test_compress_pools_a_padded_batch_as_the_embedding_tool_pools_one_sequence(tiny_esm):
    import transformers

    from distil_rank.compress import pooled, token_batches

    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_esm)
    model = transformers.EsmModel.from_pretrained(tiny_esm, add_pooling_layer=False).eval()
    sequences = [s[:20] for s in SEQUENCES.values()]
    (batch,) = token_batches(tokenizer, sequences, 10_000, "cpu")  # one batch, padded
    with torch.no_grad():
        got = pooled(model, batch)
    order = sorted(range(len(sequences)), key=lambda i: (-len(sequences[i]), i))
    for row, i in enumerate(order):
        torch.testing.assert_close(got[row], hand_pooled(tiny_esm, sequences[i]),
                                   atol=1e-5, rtol=1e-5)


def test_layer_option(tiny_esm, fasta, tmp_path):
    out = tmp_path / "layer1.pt"
    assert main(["--fasta", str(fasta), "--model", str(tiny_esm), "--out", str(out),
                 "--layer", "1"]) == 0
    data = load_embeddings(out)
    torch.testing.assert_close(data.embeddings[0], hand_pooled(tiny_esm, SEQUENCES["p1"], 1),
                               atol=1e-5, rtol=1e-5)


def test_reject_long_sequences(tiny_esm, fasta, tmp_path, capsys):
    out = tmp_path / "x.pt"
    assert main(["--fasta", str(fasta), "--model", str(tiny_esm), "--out", str(out),
                 "--on-long", "reject"]) == 2
    err = capsys.readouterr().err
    assert "1 sequence(s) longer" in err and "'p3'" in err
    assert not out.exists()


def test_split_writes_a_pair_that_main_runs_on(tiny_esm, fasta, tmp_path):
    from distil_rank.benchmark import cli as benchmark

    folder = tmp_path / "pair"
    assert main(["--fasta", str(fasta), "--model", str(tiny_esm), "--out", str(folder),
                 "--split", "0.5", "--seed", "3"]) == 0
    train = load_embeddings(folder / "embeddings_train.pt")
    val = load_embeddings(folder / "embeddings_val.pt")
    assert sorted(train.ids + val.ids) == sorted(SEQUENCES)
    assert train.provenance["split"] == "train" and val.provenance["split_seed"] == 3
    code = benchmark.main(["--quick", "--no-sweep", "--seeds", "1", "--out", str(tmp_path / "res"),
                           "--train", str(folder / "embeddings_train.pt"),
                           "--val", str(folder / "embeddings_val.pt")])
    assert code == 0


def test_unknown_model_is_a_clear_error(fasta, tmp_path, capsys):
    out = str(tmp_path / "o.pt")
    assert main(["--fasta", str(fasta), "--model", "esm3_huge", "--out", out]) == 2
    assert "not a local directory nor an ESM-2 name" in capsys.readouterr().err


@pytest.mark.parametrize("text, message", [
    ("", "no FASTA records"),
    ("MKV\n>a\nMKV\n", ":1: sequence text before the first '>'"),
    (">a\nMKV\n>b\n\n>c\nMK\n", ":3: record 'b' has an empty sequence"),
    (">a\nMKV\n>b\nMK1V\n", ":4: record 'b' has characters outside the amino-acid alphabet: '1'"),
    (">a\nMKV\n>a\nMKV\n", ":3: duplicate id 'a' (first at line 1)"),
    (">\nMKV\n", ":1: header with no identifier"),
])
def test_fasta_problems_name_the_record_and_line(tmp_path, text, message):
    path = tmp_path / "bad.fasta"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        read_fasta(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_fasta_accepts_lowercase_and_a_stop_mark(tmp_path):
    path = tmp_path / "ok.fasta"
    path.write_text(">x desc\nmkv\nla*\n")
    (record,) = read_fasta(path)
    assert record.id == "x" and record.sequence == "MKVLA" and record.line == 1


def test_fasta_accepts_residues_written_in_blocks(tmp_path):
    """Some tools write a sequence in blocks of ten, spaces between: the residues, not the
    spaces, are the sequence (a stray character among them is still refused)."""
    path = tmp_path / "blocks.fasta"
    path.write_text(">x\nMKVLAGHSTE DRPQNFYWCI\tMK\n>y\nMKV LA-G\n")
    with pytest.raises(InputError, match="'y' has characters outside the amino-acid alphabet: '-'"):
        read_fasta(path)
    path.write_text(">x\nMKVLAGHSTE DRPQNFYWCI\tMK\n")
    assert read_fasta(path)[0].sequence == "MKVLAGHSTEDRPQNFYWCIMK"


def test_length_batches_respect_the_budget_and_cover_everything():
    lengths = [5, 30, 2, 30, 12, 7, 1, 100]
    batches = length_batches(lengths, max_tokens=64)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        width = max(lengths[i] for i in batch) + 2
        assert width * len(batch) <= 64 or len(batch) == 1


def test_labels_travel_with_the_split_and_the_benchmark_builds_the_fitness_head(tiny_esm, fasta,
                                                                                tmp_path):
    import json

    from distil_rank.benchmark import cli as benchmark

    labels = tmp_path / "dms.csv"
    values = {"p1": 0.3, "p2": -1.2, "p3": 2.5, "p4": 0.0, "p5": 1.1, "p6": -0.4}
    labels.write_text("id,score_note,fitness\n" + "".join(
        f"{k},x,{v}\n" for k, v in values.items()) + "p99,x,7\n")  # p99 names no record
    folder = tmp_path / "pair"
    assert main(["--fasta", str(fasta), "--model", str(tiny_esm), "--out", str(folder),
                 "--split", "0.5", "--labels", str(labels)]) == 0
    train = load_embeddings(folder / "embeddings_train.pt")
    val = load_embeddings(folder / "embeddings_val.pt")
    for part in (train, val):
        assert part.fitness.tolist() == pytest.approx([values[i] for i in part.ids])
    out = tmp_path / "res"
    assert benchmark.main(["--quick", "--no-sweep", "--seeds", "1", "--out", str(out),
                           "--train", str(folder / "embeddings_train.pt"),
                           "--val", str(folder / "embeddings_val.pt")]) == 0
    summary = json.loads((out / "distil_rank_summary.json").read_text())
    assert "Fitness-Head" in summary["teachers"] and summary["data"]["has_fitness"]


@pytest.mark.parametrize("text, message", [
    ("id,fitness\np1,0.1\np2,0.2\np3,0.3\np4,0.4\np5,0.5\n",
     "no fitness for record 'p6' (FASTA line 15)"),
    ("id,fitness\np1,0.1\np1,0.2\n", ":3: a second label for 'p1' (first at line 2)"),
    ("id,fitness\np1,high\n", ":2: the fitness of 'p1' is 'high', not a number"),
    ("id,fitness\np1,nan\n", ":2: the fitness of 'p1' is nan"),
    ("name,score\np1,1\n", ":1: expected a header with the columns id and fitness"),
    ("mutant,mutated_sequence,DMS_score\np1,MK,1\n",
     "found mutant,mutated_sequence,DMS_score (a ProteinGym table: rename its columns mutant to "
     "id and DMS_score to fitness)"),
    ("id,fitness\np1\n", ":2: 1 columns, the header has 2"),
])
def test_label_problems_name_the_record_and_line(fasta, tmp_path, text, message):
    path = tmp_path / "labels.csv"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        read_labels(path, read_fasta(fasta))
    assert message in str(err.value) and str(path) in str(err.value)



def held_out(report: dict, fasta) -> list[str]:
    """The held-out proteins of a compress run, recomputed from its seed and split."""
    from distil_rank.embed import read_fasta
    from distil_rank.embeddings import split_indices

    sequences = [r.sequence for r in read_fasta(fasta)]
    _, held = split_indices(len(sequences), 0.2, report["seed"])
    return [sequences[i] for i in held]


def test_compress_writes_a_model_that_load_compressed_loads_and_a_report(tiny_esm, tmp_path):
    import transformers

    from distil_rank import load_compressed
    from distil_rank.compress import main as compress

    fasta = tmp_path / "many.fasta"
    g = torch.Generator().manual_seed(0)
    letters = "ACDEFGHIKLMNPQRSTVWY"
    fasta.write_text("".join(
        f">q{i}\n" + "".join(letters[int(k)] for k in torch.randint(0, 20, (8 + i % 11,),
                                                                     generator=g)) + "\n"
        for i in range(40)))
    for objective in ("layer", "output"):
        out = tmp_path / objective
        assert compress(["--model", str(tiny_esm), "--fasta", str(fasta), "--budget", "0.5",
                         "--out", str(out), "--objective", objective, "--device", "cpu"]) == 0
        report = json.loads((out / "report.json").read_text())
        assert report["weights_kept_fraction"] <= 0.5
        ranks = [layer["rank"] for layer in report["layers"]]
        assert len(ranks) == 2 * 6 and any(r is not None for r in ranks)  # 6 Linear a layer
        assert -1 < report["holdout"]["explained_variance"] <= 1
        assert report["proteins"]["holdout"] == 8 and report["objective"] == objective
        speed = report["throughput"]
        assert speed["passes"] == 5 and speed["proteins"] == 8
        assert speed["tokens"] == sum(len(s) + 2 for s in held_out(report, fasta))
        for model in ("dense", "compressed"):
            timed = speed[model]
            assert timed["repeats"] == 5 and timed["p25_ms"] <= timed["median_ms"] <= \
                timed["p75_ms"]
            assert timed["tokens_per_second"] == pytest.approx(
                speed["tokens"] / timed["median_ms"] * 1e3)
        assert speed["speedup"] == pytest.approx(speed["dense"]["median_ms"]
                                                 / speed["compressed"]["median_ms"])
        assert set(speed["untrusted"]) <= {"noisy", "quantised"}
        with_pooler = transformers.EsmModel.from_pretrained(tiny_esm)  # as the docs once said
        with pytest.raises(ValueError, match="add_pooling_layer=False"):
            load_compressed(with_pooler, out / "model.lowrank.safetensors")
        fresh = transformers.EsmModel.from_pretrained(tiny_esm, add_pooling_layer=False)
        load_compressed(fresh, out / "model.lowrank.safetensors")  # checks every key and shape
        compressed = sum(type(m).__name__ == "LowRankLinear" for m in fresh.modules())
        assert compressed == sum(r is not None for r in ranks)
        recompute_the_report(report, fresh, tiny_esm, fasta)


def recompute_the_report(report: dict, fresh, folder, fasta) -> None:
    """The report's figures from the saved model, by hand: the weights kept (factors r (in +
    out) or the dense in out, biases aside) over the encoder's Linear weights, and the held-out
    pooled embeddings' cosine and explained variance against the dense model's."""
    import transformers

    from distil_rank.embed import embed_sequences

    dense = transformers.EsmModel.from_pretrained(folder, add_pooling_layer=False)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    kept = total = 0
    for name, module in fresh.named_modules():
        if not name.startswith("encoder."):
            continue
        if type(module).__name__ == "LowRankLinear":
            kept += module.rank * (module.in_features + module.out_features)
            total += module.in_features * module.out_features
        elif isinstance(module, torch.nn.Linear):
            kept += module.weight.numel()
            total += module.weight.numel()
    assert report["weights_kept_fraction"] == pytest.approx(kept / total, rel=1e-12)
    held = held_out(report, fasta)
    y = embed_sequences(dense, tokenizer, held, progress=False).double()
    y_hat = embed_sequences(fresh, tokenizer, held, progress=False).double()
    cosine = torch.nn.functional.cosine_similarity(y_hat, y).mean().item()
    explained = 1 - ((y - y_hat) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()
    assert report["holdout"]["cosine"] == pytest.approx(cosine, abs=1e-5)
    assert report["holdout"]["explained_variance"] == pytest.approx(explained.item(), abs=1e-5)


def test_compress_refuses_a_budget_it_cannot_keep_in_one_line(tiny_esm, fasta, tmp_path,
                                                             capsys):
    from distil_rank.compress import main as compress

    for budget in ("0", "1.5", "0.001"):  # the last: below rank 1 in every layer
        code = compress(["--model", str(tiny_esm), "--fasta", str(fasta), "--budget", budget,
                         "--out", str(tmp_path / "out"), "--device", "cpu", "--holdout", "0.4"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("error: --budget"), err
        assert not (tmp_path / "out" / "report.json").exists()


def test_compress_says_and_records_how_many_proteins_it_cut_to_the_model_limit(
        tiny_esm, fasta, tmp_path, capsys):
    from distil_rank.compress import main as compress

    out = tmp_path / "out"
    assert compress(["--model", str(tiny_esm), "--fasta", str(fasta), "--budget", "0.9",
                     "--out", str(out), "--device", "cpu", "--holdout", "0.4"]) == 0
    too_long = sum(len(s) > 22 - 2 for s in SEQUENCES.values())
    assert too_long == 1  # p3, as the embedding tool's test finds
    assert f"note: truncated {too_long} sequence(s)" in capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["proteins"]["truncated_to_the_model_limit"] == too_long


def test_compress_refuses_a_holdout_of_one_protein_up_front(tiny_esm, fasta, tmp_path, capsys):
    """Six proteins at --holdout 0.2 hold out one: its explained variance would be nan."""
    from distil_rank.compress import main as compress

    code = compress(["--model", str(tiny_esm), "--fasta", str(fasta), "--budget", "0.5",
                     "--out", str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: --holdout 0.2: of 6 proteins") and "at least 2" in err[0]
    assert not (tmp_path / "out").exists()


def test_compress_reports_an_explained_variance_it_cannot_compute_as_such(tiny_esm, tmp_path,
                                                                          capsys):
    """Held-out proteins that are all the same sequence have one dense embedding: explained
    variance is 0 / 0, recorded as null with the reason and said so, never as nan."""
    from distil_rank.compress import REPORT_FILE
    from distil_rank.compress import main as compress

    fasta = tmp_path / "same.fasta"
    fasta.write_text("".join(f">p{i}\nMKTAYIAKQR\n" for i in range(10)))
    assert compress(["--model", str(tiny_esm), "--fasta", str(fasta), "--budget", "0.5",
                     "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    holdout = json.loads((tmp_path / "out" / REPORT_FILE).read_text())["holdout"]
    assert holdout["explained_variance"] is None
    assert "all the same" in holdout["explained_variance_undefined"]
    out = capsys.readouterr().out
    assert "explained variance not computable (the held-out" in out and "nan" not in out


def test_a_masked_lm_checkpoint_loads_its_encoder_in_one_line_and_a_lacking_one_warns(
        tiny_esm, tmp_path, capsys):
    """The ESM-2 releases are masked-LM checkpoints: the tools read their encoder, and
    transformers' table of the unused head's keys becomes one note. An encoder weight the
    checkpoint lacks starts at random: that is a warning."""
    import transformers
    from safetensors.torch import load_file, save_file

    config = transformers.EsmConfig.from_pretrained(tiny_esm)
    torch.manual_seed(0)
    masked_lm = tmp_path / "mlm"
    transformers.EsmForMaskedLM(config).save_pretrained(masked_lm)
    transformers.AutoTokenizer.from_pretrained(tiny_esm).save_pretrained(masked_lm)
    capsys.readouterr()
    _, model = families.ESM2.load(str(masked_lm), True)
    err = capsys.readouterr().err
    assert f"note: {masked_lm}: lm_head not used (the tools read the encoder)" in err
    assert "LOAD REPORT" not in err and "UNEXPECTED" not in err and "warning" not in err
    assert isinstance(model, transformers.EsmModel)
    weights = load_file(masked_lm / "model.safetensors")
    dropped = next(k for k in weights if "encoder.layer.0.attention.self.query.weight" in k)
    save_file({k: v for k, v in weights.items() if k != dropped}, masked_lm / "model.safetensors",
              metadata={"format": "pt"})
    families.ESM2.load(str(masked_lm), True)
    assert "warning: " in capsys.readouterr().err


def test_labels_may_be_tab_separated(fasta, tmp_path):
    records = read_fasta(fasta)
    path = tmp_path / "labels.tsv"
    path.write_text("id\tfitness\n" + "".join(f"{r.id}\t{i / 10}\n" for i, r in enumerate(records)))
    expected = [i / 10 for i in range(len(records))]
    assert read_labels(path, records).tolist() == pytest.approx(expected)
