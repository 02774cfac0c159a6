"""The committed summaries, and a fresh run's, follow reference/distil_rank_summary.schema.json,
which is generated from the records that write them (distil_rank/benchmark/schema.py)."""

import copy
import json

import pytest

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
