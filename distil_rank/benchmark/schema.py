"""The summary's JSON schema, generated from the records that write the summary
(benchmark/results.py): one definition per record under $defs, referenced wherever it recurs,
every key described by the docstring under its field. A new figure is one field on a record;
its schema follows.

    python -m distil_rank.benchmark.schema            # rewrite the committed schema
    python -m distil_rank.benchmark.schema --check    # exit 1 when it differs from the records

tests/test_schema.py checks the committed schema against this one and every committed summary
against it.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import sys
import textwrap
import types
import typing
from pathlib import Path

from distil_rank.benchmark import results
from distil_rank.errors import OneLineParser

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "reference" / "distil_rank_summary.schema.json"
JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string",
              type(None): "null", list: "array", dict: "object"}
# Fields that are the JSON's layout rather than keys: MethodScores.extra is written beside the
# scores, RunSummary.entries at the top level under each teacher's name.
LAYOUT_FIELDS = {"extra", "entries"}
# Records that may hold keys besides their fields: a registered compressor's own facts, and the
# facts a CUDA run adds to the environment.
OPEN_RECORDS = {"MethodScores", "Environment"}


def field_docs(record: type) -> dict[str, str]:
    """{field: the docstring under it}, as Sphinx and pydantic read attribute docstrings."""
    body = ast.parse(textwrap.dedent(inspect.getsource(record))).body[0].body
    return {node.target.id: " ".join(after.value.value.split())
            for node, after in zip(body, body[1:])
            if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)}


def is_record(tp) -> bool:
    return dataclasses.is_dataclass(tp) or typing.is_typeddict(tp)


class Generator:
    """Turns type annotations into JSON schema, collecting each record's definition once."""

    def __init__(self):
        self.defs: dict[str, dict] = {}

    def type_schema(self, tp) -> dict:
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if tp is typing.Any:
            return {}
        if is_record(tp):
            return self.ref(tp)
        if origin is typing.Literal:
            return {"enum": list(args)}
        if origin in (typing.Union, types.UnionType):
            members = [self.type_schema(a) for a in args]
            if all(set(m) == {"type"} for m in members):  # plain types: one "type" list
                return {"type": [m["type"] for m in members]}
            return {"anyOf": members}
        if origin is list:
            return {"type": "array", **({"items": self.type_schema(args[0])} if args else {})}
        if origin is dict:
            return {"type": "object", "additionalProperties": self.type_schema(args[1])}
        return {"type": JSON_TYPES[tp]}

    def ref(self, record: type) -> dict:
        name = record.__name__
        if name not in self.defs:
            self.defs[name] = {}  # reserved first: records may refer to each other
            self.defs[name] = self.record_schema(record, self.fields(record))
        return {"$ref": f"#/$defs/{name}"}

    @staticmethod
    def fields(record: type) -> dict[str, tuple[object, bool]]:
        """{key: (its type, whether every record has it)} in declaration order."""
        hints = typing.get_type_hints(record, vars(results), include_extras=True)
        if typing.is_typeddict(record):  # NotRequired read here: the module's annotations are
            # strings, which TypedDict's own __required_keys__ cannot see into
            return {k: (typing.get_args(t)[0], False) if typing.get_origin(t) is
                    typing.NotRequired else (t, record.__total__) for k, t in hints.items()}
        return {f.name: (hints[f.name], f.metadata.get("always_written", False) or (
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING))
                for f in dataclasses.fields(record) if f.name not in LAYOUT_FIELDS}

    def record_schema(self, record: type, keys: dict[str, tuple[object, bool]],
                      docs: dict[str, str] | None = None) -> dict:
        docs = docs or field_docs(record)
        missing = [k for k in keys if not docs.get(k)]
        if missing:
            raise TypeError(f"{record.__name__}: no docstring under {missing}")
        return {"type": "object", "description": " ".join(record.__doc__.split()),
                "properties": {k: {**self.type_schema(t), "description": docs[k]}
                               for k, (t, _) in keys.items()},
                "required": [k for k, (_, required) in keys.items() if required],
                **({} if record.__name__ in OPEN_RECORDS else {"additionalProperties": False})}


def generate() -> dict:
    """The schema of RunSummary.to_json, with each teacher's entry as TeacherEntry.to_json and
    summarise_seeds write it: its fields, its published keys, then std and per_seed over seeds."""
    gen = Generator()
    teacher = gen.fields(results.TeacherEntry) | gen.fields(results.Published) | \
        {k: (t, False) for k, (t, _) in gen.fields(results.OverSeeds).items()}
    docs = field_docs(results.TeacherEntry) | field_docs(results.Published) | \
        field_docs(results.OverSeeds)
    gen.defs["TeacherEntry"] = {}
    gen.defs["TeacherEntry"] = gen.record_schema(results.TeacherEntry, teacher, docs)
    run = gen.record_schema(results.RunSummary, gen.fields(results.RunSummary))
    run["additionalProperties"] = {
        "$ref": "#/$defs/TeacherEntry", "required": list(gen.fields(results.OverSeeds)),
        "description": "A teacher, under its display name: its entry over seeds."}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "distil_rank_summary.schema.json",
            "title": "Distil-Rank benchmark summary",
            **{k: v for k, v in run.items() if k != "description"},
            "description": "What `python main.py` writes to results/distil_rank_summary.json "
                           "(RunSummary.to_json): the run's facts, then each teacher at the top "
                           "level under its name. Generated from distil_rank/benchmark/results.py "
                           "by `python -m distil_rank.benchmark.schema`.",
            "$defs": dict(sorted(gen.defs.items()))}


def schema_text() -> str:
    return json.dumps(generate(), indent=1) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help=f"exit 1 when {SCHEMA_PATH.name} differs from the generated one")
    args = parser.parse_args(argv)
    if args.check:
        same = SCHEMA_PATH.is_file() and SCHEMA_PATH.read_text() == schema_text()
        print(f"{SCHEMA_PATH.name}: " + ("matches the records" if same else
              "differs from the records: run python -m distil_rank.benchmark.schema"))
        return 0 if same else 1
    SCHEMA_PATH.write_text(schema_text())
    print(f"wrote {SCHEMA_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
