"""The committed summaries, and a fresh run's, follow reference/distil_rank_summary.schema.json,
which is generated from the records that write them (distil_rank/benchmark/schema.py)."""

import copy
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

jsonschema = pytest.importorskip("jsonschema")


@pytest.fixture(scope="module")
def schema(root):
    schema = json.loads((root / "reference" / "distil_rank_summary.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def committed_summaries(root):
    return sorted(root.glob("reference/**/distil_rank_summary.json"))


def test_committed_summaries_follow_the_schema(root, schema):
    paths = committed_summaries(root)
    assert paths, "no committed summary"
    for path in paths:
        jsonschema.validate(json.loads(path.read_text()), schema,
                            cls=jsonschema.Draft202012Validator)


def test_the_committed_schema_is_the_one_the_records_generate(schema):
    from distil_rank.benchmark import schema as generator

    assert schema == generator.generate(), \
        "run python -m distil_rank.benchmark.schema and commit the schema it writes"
    assert generator.main(["--check"]) == 0


def test_every_key_is_described(schema):
    def walk(node, where):
        if isinstance(node, dict):
            for key, sub in node.get("properties", {}).items():
                assert isinstance(sub, dict) and sub.get("description"), \
                    f"{where}.{key} has no description"
                walk(sub, f"{where}.{key}")
            for key in ("additionalProperties", "items"):
                if isinstance(node.get(key), dict):
                    walk(node[key], f"{where}[]")
    walk(schema, "summary")
    for name, record in schema["$defs"].items():
        assert record.get("description"), name
        walk(record, name)


def test_a_field_without_a_docstring_is_refused():
    """The generator reads every key's description from the docstring under its field."""
    from dataclasses import dataclass

    from distil_rank.benchmark.schema import Generator, field_docs

    @dataclass
    class Record:
        """A record."""

        described: int
        """What it counts."""
        bare: float = 0.0

    assert field_docs(Record) == {"described": "What it counts."}
    with pytest.raises(TypeError, match=r"Record: no docstring under \['bare'\]"):
        Generator().ref(Record)


def test_the_schema_refuses_a_summary_without_a_published_key(root, schema):
    summary = json.loads(committed_summaries(root)[0].read_text())
    broken = copy.deepcopy(summary)
    del broken[broken["teachers"][0]]["svd_cosine"]
    with pytest.raises(jsonschema.ValidationError, match="svd_cosine"):
        jsonschema.validate(broken, schema, cls=jsonschema.Draft202012Validator)
    stray = copy.deepcopy(summary)
    stray[stray["teachers"][0]]["distillation"]["distil_da"]["made_up"] = 1.0
    with pytest.raises(jsonschema.ValidationError, match="made_up"):
        jsonschema.validate(stray, schema, cls=jsonschema.Draft202012Validator)
    wrong = copy.deepcopy(summary)
    wrong["latency_matrix"]["cpu"]["rows"][0]["dense"]["median_ms"] = "fast"
    with pytest.raises(jsonschema.ValidationError, match="'fast' is not of type 'number'"):
        jsonschema.validate(wrong, schema, cls=jsonschema.Draft202012Validator)


def test_a_compressors_own_facts_sit_beside_its_scores(root, schema):
    """MethodScores is open: a registered compressor's details (Student.details) are keys beside
    the scores; a score of the wrong type is still refused."""
    summary = json.loads(committed_summaries(root)[0].read_text())
    scores = summary[summary["teachers"][0]]["methods"]["svd"]
    scores["iterations"] = 12
    jsonschema.validate(summary, schema, cls=jsonschema.Draft202012Validator)
    scores["rank"] = 1.5
    with pytest.raises(jsonschema.ValidationError, match="1.5 is not of type 'integer'"):
        jsonschema.validate(summary, schema, cls=jsonschema.Draft202012Validator)


def test_adding_a_metric_as_contributing_shows_it(root, tmp_path):
    """CONTRIBUTING's "Adding a metric", applied as written to a copy of the package: the new
    key is computed, is a field of MethodScores, and the generated schema describes it."""
    text = (root / "CONTRIBUTING.md").read_text()
    diff = re.search(r"## Adding a metric.*?```diff\n(.*?)```", text, re.S).group(1)
    shutil.copytree(root / "distil_rank", tmp_path / "distil_rank",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "reference").mkdir()
    for change in re.split(r"^ # ", diff, flags=re.M)[1:]:
        heading, *lines = change.splitlines()
        path = tmp_path / heading.split(",")[0]
        context = "".join(line[1:] + "\n" for line in lines if line.startswith(" "))
        added = "".join(line[1:] + "\n" for line in lines if line.startswith("+"))
        source = path.read_text()
        assert source.count(context) == 1, (heading, context)
        path.write_text(source.replace(context, context + added))
    check = (
        "import json, torch\n"
        "from distil_rank.benchmark import schema\n"
        "from distil_rank.benchmark.results import method_scores\n"
        "from distil_rank.metrics import fidelity\n"
        "g = torch.Generator().manual_seed(0)\n"
        "y, y_hat = torch.randn(9, 4, generator=g), torch.randn(9, 4, generator=g)\n"
        "figures = fidelity(y, y_hat)\n"
        "scores = method_scores({**figures, 'fit_seconds': 0.0, 'params': 8, 'rank': 1})\n"
        "assert schema.main([]) == 0\n"
        "print(json.dumps([figures['cosine_median'], scores.cosine_median, scores.extra]))\n")
    done = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    computed, field, extra = json.loads(done.stdout.splitlines()[-1])
    g = torch.Generator().manual_seed(0)
    y, y_hat = torch.randn(9, 4, generator=g), torch.randn(9, 4, generator=g)
    by_hand = sorted(((a @ b) / (a.norm() * b.norm())).item() for a, b in zip(y, y_hat))[4]
    assert computed == field == pytest.approx(by_hand, abs=1e-6) and extra == {}
    generated = json.loads((tmp_path / "reference" / "distil_rank_summary.schema.json").read_text())
    assert generated["$defs"]["MethodScores"]["properties"]["cosine_median"] == {
        "type": ["number", "null"],
        "description": "Median over validation rows of the per-row cosine."}
