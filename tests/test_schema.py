"""The committed summaries, and a fresh run's, follow reference/distil_rank_summary.schema.json."""

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


def test_the_schema_refuses_a_summary_without_a_published_key(root, schema):
    summary = json.loads(committed_summaries(root)[0].read_text())
    broken = copy.deepcopy(summary)
    del broken[broken["teachers"][0]]["svd_cosine"]
    with pytest.raises(jsonschema.ValidationError, match="svd_cosine"):
        jsonschema.validate(broken, schema, cls=jsonschema.Draft202012Validator)
    stray = copy.deepcopy(summary)
    stray[stray["teachers"][0]]["methods"]["svd"]["made_up"] = 1.0
    with pytest.raises(jsonschema.ValidationError, match="made_up"):
        jsonschema.validate(stray, schema, cls=jsonschema.Draft202012Validator)
