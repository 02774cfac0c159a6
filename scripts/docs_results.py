"""Regenerate docs/results.md, the README's figures and docs/api.md's from the committed records
(no number typed by hand).

    python scripts/docs_results.py            # rewrites each page between its markers
    python scripts/docs_results.py --check    # exit 1 if any is out of date

Reads reference/**/distil_rank_summary.json, reference/task_trained_ablation.json and
bench/results/{speed,latency,calibrate,compress_model}_*.json, through RunSummary.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import statistics
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from distil_rank.benchmark.report import (
    best_head_method,
    describe_data,
    fmt,
    latency_table,
    pm,
    results_table,
    task_table,
    teacher_latency_table,
    template_environment,
)
from distil_rank.benchmark.results import Results, RunSummary, TeacherEntry
from distil_rank.errors import OneLineParser

ROOT = Path(__file__).resolve().parents[1]

RECIPE = "distil"  # the published recipe's student in our runs: SVD start, their settings


@functools.cache
def templates():
    """The prose: Markdown templates in scripts/templates, filled with the records' figures
    (report.template_environment, as the run's headline is)."""
    env = template_environment(ROOT / "scripts" / "templates")
    env.filters.update(run_time=_run_time, provenance=_provenance, flags=_flags,
                       bare=lambda value: format(value, ".3f").replace("0.", ".", 1))
    env.globals.update(pm=pm, fmt=fmt)
    return env


def fill(template: str, **figures) -> str:
    """A template of scripts/templates filled with `figures`, its last line's end left out."""
    return templates().get_template(f"{template}.md").render(**figures).rstrip("\n")


def sweep_tables(summary: RunSummary, view: Results) -> list[str]:
    first = view.entries[summary.teachers[0]].sweep
    gap = first and max(e.sweep["closed_form_max_abs_gap"] for e in view.entries.values())
    return fill("sweep", summary=summary, view=view, first=first, gap=gap).split("\n")


def calibration_paragraph(cal: dict) -> str:
    """A bench/calibrate_1m.py record in words."""
    return fill("calibration", cal=cal)


def compress_model_paragraph(run: dict) -> str:
    """A bench/compress_model.py record in words."""
    return fill("compress_model", run=run)


def results_section(summary: RunSummary, speeds: list[dict], latencies: list[tuple[str, dict]],
                    calibrations: list[dict], compress_models: list[dict],
                    source: Sources) -> str:
    view = summary.results()
    latency = teacher_latency_table(view)
    for label, matrix in [("The run's own latency matrix (`python main.py`)", m)
                          for m in summary.latency_matrix.values()] + \
            [(label, matrix) for label, matrix in latencies]:
        latency += [""] + latency_table(matrix, label)
    rest = [line for speed in speeds for line in speed_paragraphs(speed)] + gpu_section(source)
    return fill("results", summary=summary, kind=describe_data(summary),
                first=view.entries[summary.teachers[0]].derived(),
                tables="\n".join(results_table(view) + task_lines(summary, view)),
                sweep="\n".join(sweep_tables(summary, view)),
                batch=view.entries[summary.teachers[0]].latency["teacher"]["batch"],
                latency="\n".join(latency),
                gpu_latency=any("cpu" not in m["device"].lower() for _, m in latencies),
                paragraphs=[*map(calibration_paragraph, calibrations),
                            *map(compress_model_paragraph, compress_models)],
                rest="\n".join(rest))


def task_lines(summary: RunSummary, view: Results) -> list[str]:
    """The Fitness-Head teacher's table, judged by its task, and what it says in words."""
    task = task_table(view)
    return fill("task", summary=summary, view=view, table="\n".join(task)).split("\n") \
        if task else []


def speed_paragraphs(speed: dict) -> list[str]:
    """A bench/speed.py record in words: the default run, the closed forms against
    distillation, and the students trained together."""
    return ["", *fill("speed", speed=speed).split("\n")]


def gpu_section(source: Sources, folder: str = "reference/cuda") -> list[str]:
    """The benchmark as `bash bench/gpu.sh` ran it on a GPU, when its results are committed."""
    run = source.summary(f"{folder}/distil_rank_summary.json")
    tables = []
    if run is not None:
        teachers = run.results()
        tables = results_table(teachers) + [""] + task_table(teachers) + [""] + \
            teacher_latency_table(teachers)
        for matrix in run.latency_matrix.values():
            tables += [""] + latency_table(matrix, "That run's latency matrix")
    return ["", *fill("gpu", run=run, tables="\n".join(tables), published=source.summary(
        f"{folder}/published/distil_rank_summary.json")).split("\n")]


def _provenance(record: dict) -> str:
    """Where a committed record came from, when it says (e.g. a GPU record of older code)."""
    note = record.get("provenance", {}).get("note")
    return f" ({note})" if note else ""


def _run_time(summary: RunSummary) -> str:
    seconds = summary.environment.get("run_seconds")  # absent from runs before it was kept
    return "wall time not recorded" if seconds is None else f"{seconds:.0f} s wall time"


def recipe_figures(entry: dict) -> dict:
    """The published keys with the published recipe (`distil`) as the student."""
    return replace(TeacherEntry.from_json(entry), student_method=RECIPE).derived()


def _explained(summary: RunSummary, teacher: str, method: str) -> float:
    return summary.results().entries[teacher].methods[method].explained_variance


def _median_speedup(summary: RunSummary) -> float:
    return statistics.median(summary.entries[t]["speedup"] for t in summary.teachers)


def published_section(published: dict, same_recipe: RunSummary, real: RunSummary) -> str:
    """Their table beside ours: the same recipe on 1280-d synthetic data at rank 64, and on the
    real 320-d TEM-1 embeddings at rank 16."""
    columns = (same_recipe, real)
    return fill("published", published=published, same=same_recipe, real=real, columns=columns,
                recipe=RECIPE, ours={t: [recipe_figures(c.entries[t]) for c in columns]
                                     for t in published["teachers"]},
                first=[c.entries[c.teachers[0]] for c in columns],
                speedups=[_median_speedup(c) for c in columns], explained=_explained)


def ablation_section(ablation: dict) -> str:
    """The Task-Trained teacher's recipes, side by side on both settings."""
    return fill("ablation", ablation=ablation)


def replace_between(text: str, section: str, body: str) -> str:
    """`body` in place of what stands between <!-- section:start --> and <!-- section:end -->."""
    start, end = (f"<!-- {section}:{edge} -->" for edge in ("start", "end"))
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


class Sources:
    """The result files: as committed (git HEAD) for --check, so that a run that rewrites the
    working copy (python main.py) cannot put the README out of step with what is committed; the
    working copy otherwise, or where there is no git history."""

    def __init__(self, committed: bool, root: Path = ROOT):
        listed = subprocess.run(["git", "ls-tree", "-r", "--name-only", "HEAD"], cwd=root,
                                capture_output=True, text=True) if committed else None
        self.tracked = set(listed.stdout.split()) if listed and listed.returncode == 0 else None
        self.root = root

    def glob(self, pattern: str) -> list[str]:
        if self.tracked is None:
            return sorted(p.relative_to(self.root).as_posix() for p in self.root.glob(pattern))
        return sorted(p for p in self.tracked if fnmatch.fnmatch(p, pattern))

    def summary(self, path: str) -> RunSummary | None:
        tree = self.read(path)
        return None if tree is None else RunSummary.from_json(tree)

    def read(self, path: str) -> dict | None:
        if self.tracked is None:
            file = self.root / path
            return json.loads(file.read_text()) if file.exists() else None
        if path not in self.tracked:
            return None
        return json.loads(subprocess.run(["git", "show", f"HEAD:{path}"], cwd=self.root,
                                         check=True, capture_output=True, text=True).stdout)


def real_model_section(record: dict) -> str:
    """A bench/real_model.py record as a table, what it says of distillation on top and of
    more probes, then per budget which option to pick."""
    return fill("real_model", record=record, budgets=budgets_of(record["variants"]),
                frontier="\n".join(frontier_lines(record)))


def budgets_of(variants: dict) -> list[str]:
    """The budgets a real_model record's variants were compressed to ("80%", ...), largest
    first."""
    return sorted({name.rsplit(" ", 1)[1] for name in variants
                   if name.startswith("default allocated ") and "+" not in name},
                  key=lambda b: -float(b.rstrip("%")))


def frontier_lines(record: dict) -> list[str]:
    """Per budget, which option keeps the most for its size and which runs fastest, against
    int8 of the dense model; and whether low rank ever beats it."""
    variants = record["variants"]
    weight_only = variants.get("dense + int8 weight-only")
    budgets = budgets_of(variants)
    if weight_only is None or not budgets:
        return []
    picks = []
    for budget in budgets:
        mine = {n: r for n, r in variants.items()
                if n.endswith(f" {budget}") or f" {budget} + " in n}
        faithful = max(mine, key=lambda n: mine[n]["cosine_to_dense"])
        trusted = {n: r for n, r in mine.items() if not r.get("untrusted")} or mine
        picks.append({"budget": budget, "mine": mine, "faithful": faithful,
                      "fastest": max(trusted, key=lambda n: trusted[n]["speedup_vs_dense"]),
                      "dominated": weight_only["cosine_to_dense"] >= mine[faithful][
                          "cosine_to_dense"] and weight_only["file_bytes"] <= mine[faithful][
                          "file_bytes"]})
    verdict = frontier_verdict(record, [pick["dominated"] for pick in picks])
    return fill("frontier", picks=picks, weight_only=weight_only, verdict=verdict).split("\n")


def _flags(row: dict) -> str:
    return f" ({', '.join(row['untrusted'])}: not a finding)" if row.get("untrusted") else ""


def frontier_verdict(record: dict, beaten: list[bool]) -> str:
    """One sentence: does low rank ever keep more per byte than weight-only int8 (`beaten`:
    per budget, whether it does not), and what does it buy instead. The last of
    frontier_lines, which the README quotes."""
    variants = record["variants"]
    fast_name = max((n for n, r in variants.items() if not r.get("untrusted")),
                    key=lambda n: variants[n]["speedup_vs_dense"])
    return fill("frontier_verdict", record=record, all_beaten=all(beaten),
                weight_only=variants["dense + int8 weight-only"],
                dynamic=variants["dense + int8 dynamic"], fast_name=fast_name,
                fast=variants[fast_name], kept=sum(not b for b in beaten), budgets=len(beaten))


def fitness_splits_section(record: dict) -> str:
    """reference/fitness_splits.json as tables: every head's Spearman at D/20 per split, the
    gap to the dense head and the smallest rank within .01; then task_labels' ablation; then
    what they say, every figure and every verdict read from the record."""
    return fill("fitness_splits", **splits_figures(record))


def splits_figures(record: dict) -> dict:
    """What the splits' templates read: the record, every head's scores at D/20
    (splits_at_target) and the comparisons of splits_findings."""
    scores = splits_at_target(record)
    return {"record": record, "scores": scores, **splits_findings(record, scores)}


def splits_at_target(record: dict) -> dict[str, dict[str, dict]]:
    """{split: {head: {mean, std, gap}}} at the target rank (D/20), for the dense head, every
    compressed head and baseline, and task_labels' ablation; gap: the dense head's mean minus
    the head's."""
    at = record["ranks"].index(record["rank_at_10x"])
    table = {}
    for name, split in record["splits"].items():
        dense = split["dense"]
        heads = {"dense": {**dense, "gap": 0.0}}
        heads.update({m: {**s["spearman"][at], "gap": s["gap"][at]}
                      for m, s in split["methods"].items()})
        heads.update({m: {**s, "gap": dense["mean"] - s["mean"]}
                      for m, s in split["ablation_at_10x"].items()})
        table[name] = heads
    return table


def splits_findings(record: dict, at: dict) -> dict:
    """The comparisons scripts/templates/fitness_splits.md words: the first split is the random
    one, the others split by position."""
    first, *positions = at
    names = {s: record["splits"][s]["best_compressed_at_10x"] for s in at}
    best = {s: at[s][names[s]] for s in at}
    compressed = record["compressed_methods"]
    refined = [at[first][m]["gap"] for m in ("distil_head", "task_labels")]
    scratch = {s: best[s]["mean"] - at[s]["scratch_lowrank"]["mean"] for s in at}
    return {
        "first": first, "positions": positions,
        "best": names,
        "dense_drop": min(at[first]["dense"]["mean"] - at[p]["dense"]["mean"]
                          for p in positions),
        "dense_std": [f(at[p]["dense"]["std"] for p in positions) for f in (min, max)],
        "unmet": [s for s in at if best[s]["gap"] > record["within"]],
        "bought": 1 - min(refined) / at[first]["task_aware"]["gap"],
        "level": all(abs(at[p]["labels_only"]["mean"] - at[p]["task_labels"]["mean"])
                     <= min(at[p][m]["std"] for m in ("labels_only", "task_labels"))
                     for p in positions),
        "warm": max(abs(at[s]["distil_task"]["mean"] - at[s]["task_aware"]["mean"]) for s in at),
        "scratch_margin": scratch,
        "scratch_grows": min(scratch[p] for p in positions) > scratch[first],
        "baseline_margin": min(best[s]["mean"] - at[s][m]["mean"] for s in at
                               for m in ("pca", "ridge")),
        "spread": [f(at[p][m]["std"] for p in positions for m in compressed)
                   for f in (min, max)],
        "best_gaps": max(abs(best[p]["gap"]) for p in positions),
    }


def headline_table(summary: RunSummary) -> str:
    """The README's one table: at the default rank, how much of each teacher's output variation
    each compressor keeps, and for a head the task. The student column shows each teacher's own
    student (`student_method`), the figure its JSON key `student_explained_variance` holds."""
    view = summary.results()
    bests = {name: best_head_method(e) for name, e in view.entries.items()}
    return fill("headline", summary=summary, view=view, bests=bests, recipe=RECIPE,
                compression=view.entries[summary.teachers[0]].derived()["compression"])


def render(source: Sources) -> dict[Path, str]:
    """The new text of docs/results.md and README.md."""
    summary = source.summary("reference/distil_rank_summary.json")
    speeds = [source.read(f) for f in source.glob("bench/results/speed_*.json")]
    latencies = [(f"`{f}`{_provenance(source.read(f))}", source.read(f)["matrix"])
                 for f in source.glob("bench/results/latency_*.json")]
    calibrations = [source.read(f) for f in source.glob("bench/results/calibrate_*.json")]
    compress_models = [source.read(f) for f in source.glob("bench/results/compress_model_*.json")]
    docs = (ROOT / "docs" / "results.md").read_text()
    docs = replace_between(docs, "results", results_section(
        summary, speeds, latencies, calibrations, compress_models, source))
    published_run = source.summary("reference/published/distil_rank_summary.json")
    if published_run is not None:
        published = source.read("bench/reference/published_distil_rank.json")
        docs = replace_between(docs, "published",
                               published_section(published, published_run, summary))
    ablation = source.read("reference/task_trained_ablation.json")
    if ablation is not None:
        docs = replace_between(docs, "ablation", ablation_section(ablation))
    frontier, api = "", (ROOT / "docs" / "api.md").read_text()
    for path in source.glob("bench/results/real_model_*.json"):
        if not path.endswith("_quick.json"):
            record = source.read(path)
            docs = replace_between(docs, "real-model", real_model_section(record))
            frontier = (frontier_lines(record) or [""])[-1]
            for section in ("objectives", "probes"):
                api = replace_between(api, section, fill(f"api_{section}", record=record,
                                                         budgets=budgets_of(record["variants"])))
    splits = source.read("reference/fitness_splits.json")
    readme = replace_between((ROOT / "README.md").read_text(), "headline",
                             headline_table(summary))
    if splits is not None:
        docs = replace_between(docs, "fitness-splits", fitness_splits_section(splits))
        readme = replace_between(readme, "splits", fill("splits_readme",
                                                        **splits_figures(splits)))
    if frontier:
        readme = replace_between(readme, "frontier", frontier)
    return {ROOT / "docs" / "results.md": docs, ROOT / "README.md": readme,
            ROOT / "docs" / "api.md": api}


def main() -> int:
    p = OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true")
    args = p.parse_args()
    pages = render(Sources(committed=args.check))
    stale = [path.name for path, text in pages.items() if path.read_text() != text]
    if args.check:
        if stale:
            print(f"{', '.join(stale)} out of date: run python scripts/docs_results.py")
            return 1
        return 0
    for path, text in pages.items():
        path.write_text(text)
    print(f"regenerated {', '.join(path.name for path in pages)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
