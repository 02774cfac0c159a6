"""A model family is one entry of distil_rank/families.py: a family registered from this file
alone (a BERT-style protein model that reads residues separated by spaces, as ProtBert does)
is embedded and compressed by the tools, on a tiny randomly initialised model built here."""

import importlib.util
import json

import pytest
import torch

from distil_rank import compress, embed, families
from distil_rank.embeddings import load_embeddings, split_indices

pytestmark = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                reason="transformers is not installed")  # imported where used

SPACED_BERT = families.ModelFamily(model_type="bert", model_class="BertModel",
                                   releases={"prot_bert": "Rostlab/prot_bert"},
                                   hub_prefix="Rostlab/", spaced=True)
SEQUENCES = ["MKTAYIAKQRQISFVKSHFSRQ", "GAVLI", "MSTNPKPQRKTKRNTNRRPQDVKFPGG", "AC",
             "WWYHHEDDKR", "MKVLAAGIVGLLLAAHA", "QQRSTWYV", "PPGGAAKK"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    import transformers
    folder = tmp_path_factory.mktemp("tiny_bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"LAGVSERTIDPKQNFYMHWCXBUZO"]
    (folder / "vocab.txt").write_text("\n".join(vocab))
    tokenizer = transformers.BertTokenizer(str(folder / "vocab.txt"), do_lower_case=False)
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=16,
                                     num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(0)
    transformers.BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def fasta(tmp_path):
    path = tmp_path / "proteins.fasta"
    path.write_text("".join(f">p{i}\n{seq}\n" for i, seq in enumerate(SEQUENCES)))
    return path


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(families.FAMILIES, SPACED_BERT.model_type, SPACED_BERT)


def by_hand(folder, sequence):
    """One sequence alone, written with spaces: [CLS] residues [SEP], the residues' mean."""
    import transformers
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.BertModel.from_pretrained(folder, add_pooling_layer=False).eval()
    tokens = tokenizer([" ".join(sequence)], return_tensors="pt")
    assert tokens["input_ids"].shape[1] == len(sequence) + 2  # one token per residue
    with torch.no_grad():
        return model(**tokens).last_hidden_state[0, 1:len(sequence) + 1].mean(0)


def test_a_registered_family_is_embedded_as_its_tokenizer_frames_a_sequence(
        registered, tiny_bert, fasta, tmp_path):
    out = tmp_path / "emb.pt"
    assert embed.main(["--fasta", str(fasta), "--model", str(tiny_bert), "--out", str(out),
                       "--max-tokens", "40"]) == 0  # several padded, length-sorted batches
    data = load_embeddings(out)
    limit = 32 - 2  # max_position_embeddings less [CLS] and [SEP]
    assert data.provenance["max_residues"] == limit and data.provenance["truncated"] == 0
    for row, sequence in enumerate(SEQUENCES):
        torch.testing.assert_close(data.embeddings[row], by_hand(tiny_bert, sequence),
                                   atol=1e-5, rtol=1e-5)


def test_a_registered_family_is_compressed_on_its_encoder_layers(registered, tiny_bert, fasta,
                                                                 tmp_path, capsys):
    import transformers
    out = tmp_path / "half"
    assert compress.main(["--model", str(tiny_bert), "--fasta", str(fasta), "--budget", "0.5",
                          "--holdout", "0.25", "--out", str(out)]) == 0
    report = json.loads((out / compress.REPORT_FILE).read_text())
    names = [layer["name"] for layer in report["layers"]]
    model = transformers.BertModel.from_pretrained(tiny_bert, add_pooling_layer=False)
    expected = [n for n, m in model.named_modules()
                if isinstance(m, torch.nn.Linear) and n.startswith("encoder.")]
    assert sorted(names) == sorted(expected) and len(names) == 2 * 6
    assert report["weights_kept_fraction"] <= 0.5
    _, held = split_indices(len(SEQUENCES), 0.25, 0)  # the tool's split, seed 0
    assert report["proteins"]["holdout"] == len(held) == 2
    # tokens timed: each held-out protein's residues and its [CLS] and [SEP]
    assert report["throughput"]["tokens"] == sum(len(SEQUENCES[i]) + 2 for i in held)


def test_a_model_of_no_registered_family_is_refused_in_one_line(tiny_bert, fasta, tmp_path,
                                                                capsys):
    assert embed.main(["--fasta", str(fasta), "--model", str(tiny_bert), "--out",
                       str(tmp_path / "emb.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'bert'" in err and "families.py" in err
    assert not (tmp_path / "emb.pt").exists()
