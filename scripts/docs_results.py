"""Regenerate docs/results.md and the README's headline table from the committed records (no
number typed by hand).

    python scripts/docs_results.py            # rewrites both between their markers
    python scripts/docs_results.py --check    # exit 1 if either is out of date

Reads reference/**/distil_rank_summary.json, reference/task_trained_ablation.json and
bench/results/{speed,latency,calibrate,compress_model}_*.json, through RunSummary.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import statistics
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from distil_rank.benchmark.report import (
    describe_data,
    fmt,
    latency_table,
    pm,
    results_table,
    task_table,
    teacher_latency_table,
)
from distil_rank.benchmark.results import Results, RunSummary, TeacherEntry

ROOT = Path(__file__).resolve().parents[1]

START, END = "<!-- results:start -->", "<!-- results:end -->"
ABLATION_START, ABLATION_END = "<!-- ablation:start -->", "<!-- ablation:end -->"
PUBLISHED_START, PUBLISHED_END = "<!-- published:start -->", "<!-- published:end -->"
HEADLINE_START, HEADLINE_END = "<!-- headline:start -->", "<!-- headline:end -->"
FRONTIER_START, FRONTIER_END = "<!-- frontier:start -->", "<!-- frontier:end -->"
REAL_START, REAL_END = "<!-- real-model:start -->", "<!-- real-model:end -->"
SPLITS_START, SPLITS_END = "<!-- fitness-splits:start -->", "<!-- fitness-splits:end -->"
RECIPE = "distil"  # the published recipe's student in our runs: SVD start, their settings


def sweep_tables(summary: RunSummary, view: Results) -> list[str]:
    first = view.entries[summary.teachers[0]].sweep
    if not first:
        return ["(This run had no rank sweep: `python main.py --sweep`.)"]
    ranks = first["ranks"]
    lines = [
        "Explained variance on validation against rank (mean ± std over seeds; in brackets, the "
        "dense layer's weights over the factors', biases aside); the closed-form "
        "column is the exact optimum on the training rows from one eigendecomposition, which the "
        "fitted `data_aware` students match to "
        f"{max(e.sweep['closed_form_max_abs_gap'] for e in view.entries.values()):.1e}:",
        "",
        "| teacher | method | " + " | ".join(f"r={r} ({c:.1f}x)" for r, c in
                                           zip(ranks, first["compression"])) + " |",
        "|---|---|" + "---:|" * len(ranks),
    ]
    for teacher, entry in view.entries.items():
        sweep, std = entry.sweep, view.std(teacher, "sweep")
        curve = sweep["closed_form_train_explained_variance"]
        lines.append(f"| {teacher} | closed form (train, exact) | "
                     + " | ".join(f"{curve[r]:.4f}" for r in ranks) + " |")
        for method in sweep["methods"]:
            values = sweep["methods"][method]["explained_variance"]
            errs = std["methods"][method]["explained_variance"]
            lines.append(f"| {teacher} | {method} | "
                         + " | ".join(pm(v, e, ".4g") for v, e in zip(values, errs)) + " |")
    lines += ["", "Smallest rank whose closed form reaches a target explained variance on the "
              "training rows (mean over seeds):", "",
              "| teacher | EV 0.95 | EV 0.99 | EV 0.999 |", "|---|---:|---:|---:|"]
    for teacher, entry in view.entries.items():
        targets = entry.sweep["smallest_rank_for_train_explained_variance"]
        lines.append(f"| {teacher} | " + " | ".join(fmt(targets[t], ".0f") for t in
                                                      ("0.95", "0.99", "0.999")) + " |")
    for teacher, entry in view.heads().items():
        sweep, std = entry.sweep, view.std(teacher, "sweep")
        lines += ["", f"{teacher}: the task against rank, Spearman's rho of the compressed head's "
                  f"prediction against measured fitness on validation (the teacher head: "
                  f"{entry.teacher_task_spearman:.3f}):", "",
                  "| method | " + " | ".join(f"r={r}" for r in sweep["ranks"]) + " |",
                  "|---|" + "---:|" * len(sweep["ranks"])]
        for method, curve in sweep["methods"].items():
            errs = std["methods"][method]["task_spearman"]
            lines.append(f"| {method} | " + " | ".join(
                pm(v, e, ".3f") for v, e in zip(curve["task_spearman"], errs)) + " |")
    eff = summary.data["effective_rank"]
    lines += ["", f"The training embeddings' own effective rank: participation ratio "
              f"{eff['participation_ratio']:.1f}; {eff['components_for_90pct']}, "
              f"{eff['components_for_95pct']} and {eff['components_for_99pct']} principal "
              f"components hold 90, 95 and 99% of their variance (D = {summary.input_dim})."]
    return lines


def calibration_paragraph(cal: dict) -> str:
    """A bench/calibrate_1m.py record in words."""
    return (
        f"Streaming calibration (`python bench/calibrate_1m.py`, "
        f"{cal['environment']['device_name']}): {cal['rows']:,} x {cal['dim']} float32 rows in "
        f"{cal['shards']} `.npy` shards ({cal['bytes_on_disk'] / 1e9:.2f} GB on disk) took "
        f"{cal['stream_seconds']:.0f} s, {cal['seconds_per_million_rows']:.0f} s per million "
        f"rows (process start included), with a peak resident memory of "
        f"{cal['stream_peak_rss_mib']:.0f} MiB."
        + (f" Against the statistics computed with all rows in memory "
           f"({cal['reference_bytes_in_memory'] / 1e9:.1f} GB, exact two-pass float64), the "
           f"largest difference is {cal['max_abs_mean_difference']:.1e} in the mean and "
           f"{cal['max_abs_covariance_difference']:.1e} in the covariance "
           f"({cal['max_relative_covariance_difference']:.0e} of its largest entry)."
           if "max_abs_covariance_difference" in cal else ""))


def compress_model_paragraph(run: dict) -> str:
    """A bench/compress_model.py record in words."""
    timed, env = run['runs'], run['environment']
    return (f"`compress_model` on a transformer (`python bench/compress_model.py`, "
            f"{env['device_name']}, {env['torch_threads']} threads): {run['model']}, "
            f"{run['layers']} layers, {run['tokens']:,} tokens in {run['positions']:,} padded "
            f"positions ({run['padding_share']:.0%} padding). Every token with float64 "
            f"products, as before: {timed['every_token_float64']['seconds']:.1f} s; padding "
            f"skipped and float32 products merged in float64, the default now: "
            f"{timed['padding_skipped_float32']['seconds']:.1f} s ({run['speedup']:.1f}x). On "
            f"the same rows, the float32 products move a layer's promised explained variance "
            f"by at most {run['max_abs_explained_variance_change_float32_products']:.0e}.")


def results_section(summary: RunSummary, speeds: list[dict], latencies: list[tuple[str, dict]],
                    calibrations: list[dict], compress_models: list[dict],
                    source: Sources) -> str:
    env = summary.environment
    data = summary.data
    kind = describe_data(summary)
    view = summary.results()
    first = view.entries[summary.teachers[0]].derived()
    lines = [
        f"Produced by `python main.py` (seeds {', '.join(map(str, summary.seeds))}; "
        f"{summary.setting('distill', 'steps')} distillation steps; {_run_time(summary)}) on "
        f"{env['device_name']} with {env['torch_threads']} threads, torch {env['torch']}; "
        f"{kind}: {data['train']['rows']} train / {data['val']['rows']} "
        "validation rows, "
        f"D = {summary.input_dim}, rank r = {summary.target_rank} "
        f"({first['params_teacher']:,} -> {first['params_student']:,} parameters, "
        f"{first['compression']:.1f}x fewer). All fidelity figures are on the validation rows, "
        f"mean ± standard deviation over the {len(summary.seeds)} seeds. "
        f"The training embeddings' common mean has norm {data['embedding_mean_norm']:.3g}; their "
        f"root-mean-square distance from it is {data['embedding_spread_rms_norm']:.3g}.",
        "",
    ]
    lines += results_table(view) + task_lines(summary, view)
    lines += ["", "### Rank sweep", ""] + sweep_tables(summary, view)
    batch = view.entries[summary.teachers[0]].latency["teacher"]["batch"]
    lines += ["", "### Latency", "", "Latency of one forward pass at batch "
              f"{batch} (median of {summary.setting('latency', 'repeats')}):", "",
              ] + teacher_latency_table(view)
    for matrix in summary.latency_matrix.values():
        lines += [""] + latency_table(matrix, "The run's own latency matrix (`python main.py`)")
    for label, matrix in latencies:
        lines += [""] + latency_table(matrix, label)
    if not any("cpu" not in m["device"].lower() for _, m in latencies):
        lines += ["", "No GPU figure is recorded yet: `python bench/latency.py` on a CUDA machine "
                  "writes one (fp32 and bf16, eager and CUDA-graph replay)."]
    lines += [line for cal in calibrations for line in ("", calibration_paragraph(cal))]
    lines += [line for run in compress_models for line in ("", compress_model_paragraph(run))]
    lines += [line for speed in speeds for line in speed_paragraphs(speed)]
    lines += gpu_section(source)
    return "\n".join(lines)


def task_lines(summary: RunSummary, view: Results) -> list[str]:
    """The Fitness-Head teacher's table, judged by its task, and what it says in words."""
    task = task_table(view)
    if not task:
        return []
    lines = ["", "### A head judged by its task", "",
             "The Fitness-Head teacher's first layer, compressed at the same rank, judged by the "
             "whole head's prediction of measured fitness on validation (mean ± std over seeds):",
             ""] + task
    for name, entry in view.heads().items():
        m, run = entry.methods, entry.distillation["distil_task"]
        share = {k: m[k].task_spearman / entry.teacher_task_spearman for k in m}
        lines += ["", f"At rank {summary.target_rank} the {name}'s `task_aware` keeps "
                  f"{share['task_aware']:.0%} of the teacher head's rho and `data_aware` "
                  f"{share['data_aware']:.0%}; `distil_task` kept its warm start (step 0) "
                  f"in {run.chosen_step.count(0)} of {len(run.chosen_step)} seeds"
                  + (f", stopping early after {', '.join(map(str, run.steps_run))} steps."
                     if isinstance(run.steps_run, list) else ".")]
    return lines


def speed_paragraphs(speed: dict) -> list[str]:
    """A bench/speed.py record in words: the default run, the closed forms against
    distillation, and the students trained together."""
    fits, env = speed["fits"], speed["environment"]
    where = env["device_name"] + (f", {env['torch_threads']} threads"
                                  if env["device_name"].startswith("CPU") else "")
    where += _provenance(speed)
    default_run = (f"the default `python main.py` took {speed['default_run_seconds']:.1f} s "
                   f"(goal: at most 90 s); " if "default_run_seconds" in speed else "")
    lines = [
        "",
        f"Speed (`python bench/speed.py`, {where}): {default_run}the `data_aware` fit "
        f"(moments included) took {fits['data_aware_seconds_median'] * 1e3:.1f} ms against "
        f"{fits['distill_seconds']:.2f} s for {fits['distill_steps']} distillation steps, "
        f"{fits['ratio_distill_over_data_aware']:.1f}x faster, measured in the same process "
        f"(the 20x goal is {'met' if fits['ratio_distill_over_data_aware'] >= 20 else 'missed'}"
        f" on this machine). Most of the fit is the D x D input covariance, which is shared by "
        f"every teacher and rank: given it, a fit takes "
        f"{fits['data_aware_given_moments_seconds_median'] * 1e3:.1f} ms, "
        f"{fits['ratio_distill_over_data_aware_given_moments']:.0f}x faster than distillation."
        f" The `task_aware` fit (the head's G, the moments and the decomposition) took "
        f"{fits['task_aware_seconds_median'] * 1e3:.1f} ms, "
        f"{fits['ratio_task_aware_over_data_aware']:.2f}x the `data_aware` fit timed "
        f"beside it (goal: at most 3x).",
    ]
    if "batched" in speed:
        batched = speed["batched"]
        cases = "; ".join(
            f"{case.replace('_r', ' rank ')}: {batched[case]['one_by_one_seconds']:.2f} s one "
            f"by one, {batched[case]['together_seconds']:.2f} s together "
            f"({batched[case]['speedup']:.2f}x)" for case in ("320d_r16", "1280d_r64"))
        sweep = batched["320d_sweep_ranks"]
        lines += ["", f"Students trained together (same run): {batched['students']} "
                  f"students, {batched['steps']} steps each, every student its own teacher "
                  f"and seed. {cases}. {batched['students']} students at the sweep's ranks "
                  f"4 to 80: "
                  f"{sweep['grouped_by_rank_seconds']:.2f} s grouped by rank, "
                  f"{sweep['padded_to_max_rank_seconds']:.2f} s zero-padded to rank 80 in "
                  f"one stack."]
    return lines


def gpu_section(source: Sources, folder: str = "reference/cuda") -> list[str]:
    """The benchmark as `bash bench/gpu.sh` ran it on a GPU, when its results are committed."""
    run = source.summary(f"{folder}/distil_rank_summary.json")
    if run is None:
        return ["", "No GPU run of the benchmark is recorded yet: `bash bench/gpu.sh` on a CUDA "
                "machine writes one (`reference/cuda/`), and this section then shows it."]
    teachers = run.results()
    lines = ["", "### On a GPU", "",
             f"`bash bench/gpu.sh` on {run.environment['device_name']} (torch "
             f"{run.environment['torch']}, CUDA {run.environment['cuda']}): "
             f"`python main.py --device cuda`, the default data, {len(run.seeds)} seeds, "
             f"distillation on the GPU (`reference/cuda/`; {_run_time(run)}). Which commit it "
             f"measured, and what its timings describe: `reference/cuda/PROVENANCE.md`.", ""]
    lines += results_table(teachers) + [""] + task_table(teachers) + [""]
    lines += teacher_latency_table(teachers)
    for matrix in run.latency_matrix.values():
        lines += [""] + latency_table(matrix, "That run's latency matrix")
    pub = source.summary(f"{folder}/published/distil_rank_summary.json")
    if pub is not None:
        first = pub.entries[pub.teachers[0]]
        lines += ["", f"The published preset on that GPU (`reference/cuda/published/`): rank "
                  f"{pub.target_rank} of {pub.input_dim}-d layers, speedup at batch "
                  f"{first['latency']['teacher']['batch']} {first['speedup']:.2f}x (FLOP ratio "
                  f"{first['flop_ratio']:.1f}x)."]
    return lines


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
    lines = [
        "| | published (their data, ESM-2 650M, 1280-d, r = 64) | ours, same recipe, 1280-d "
        f"synthetic, r = {same_recipe.target_rank} | ours, real TEM-1 ESM-2 8M, "
        f"{real.input_dim}-d, r = {real.target_rank} |",
        "|---|---:|---:|---:|",
    ]
    rows = (("SVD cosine", "svd_cosine", ".3f"), ("student cosine", "student_cosine", ".3f"),
            ("improvement", "cosine_improvement", "+.1%"),
            ("MSE reduction", "mse_reduction", ".1%"))
    for teacher, theirs in published["teachers"].items():
        ours = [recipe_figures(c.entries[teacher]) for c in columns]
        for label, key, spec in rows:
            lines.append(f"| {theirs['label']}: {label} | {format(theirs[key], spec)} | "
                         + " | ".join(format(o[key], spec) for o in ours) + " |")
    first = [c.entries[c.teachers[0]] for c in columns]
    lines.append(f"| speedup at batch {first[0]['latency']['teacher']['batch']} (ours: the "
                 f"median over the teachers) | {published['speedup']} | "
                 + " | ".join(f"{_median_speedup(c):.1f}x ({c.environment['device_name']})"
                              for c in columns) + " |")
    lines.append(f"| compression | {published['compression']}x | "
                 + " | ".join(f"{f['compression']:.1f}x" for f in first) + " |")
    lines.append(f"| parameters | {published['params_teacher']} -> {published['params_student']} | "
                 + " | ".join(f"{f['params_teacher']:,} -> {f['params_student']:,}"
                              for f in first) + " |")
    for method, label in ((RECIPE, "published recipe"), ("data_aware", "closed form")):
        for teacher, theirs in published["teachers"].items():
            lines.append(f"| {theirs['label']}: explained variance, {label} | not reported | "
                         + " | ".join(f"{_explained(c, teacher, method):.4g}" for c in columns)
                         + " |")
    seeds = " and ".join(str(len(c.seeds)) for c in columns)
    times = " and ".join(_run_time(c) for c in columns)
    lines += ["", f"Our columns: `python main.py --preset published` and `python main.py` "
              f"({times} on {columns[0].environment['device_name']}), the "
              f"means of {seeds} seeds, with the published recipe (`distil`: SVD warm start, AdamW "
              f"3e-3, batch 64, 1000 steps, MSE + 0.1 (1 - cos)) as the student, so that like is "
              f"compared with like; improvement is student minus SVD cosine, MSE reduction is "
              f"relative to the SVD's. The published column is quoted from "
              f"`bench/reference/published_distil_rank.json`, as it was given to this project; "
              f"none of its figures was measured here."]
    return "\n".join(lines)


def ablation_section(ablation: dict) -> str:
    """The Task-Trained teacher's recipes, side by side on both settings."""
    settings = ablation["settings"]
    lines = ["| init | weight decay | steps | " + " | ".join(
        f"{name}: SVD cos / SVD EV / closed-form EV / recipe cos / off-data / beyond r"
        for name in settings) + " |", "|---|---:|---:|" + "---:|" * len(settings)]
    for i, recipe in enumerate(next(iter(settings.values()))["recipes"]):
        cells = []
        for result in settings.values():
            r = result["recipes"][i]
            cells.append(f"{r['svd_cosine']:.4f} / {r['svd_explained_variance']:.3g} / "
                         f"{r['data_aware_explained_variance']:.4f} / {r['distil_cosine']:.4f} / "
                         f"{r['energy_outside_data_span']:.3f} / {r['svd_discarded_energy']:.3f}")
        lines.append(f"| {recipe['init']} | {recipe['weight_decay']:g} | "
                     f"{recipe['teacher_steps']} | " + " | ".join(cells) + " |")
    described = ", ".join(f"{name}: {r['data']}, D = {r['input_dim']}, rank {r['rank']}"
                          for name, r in settings.items())
    lines += ["", f"`python scripts/task_trained_ablation.py` ({described}; seed 0 of the "
              f"benchmark's teacher; the recipe's student: SVD start, "
              f"{next(iter(settings.values()))['distil_steps']} steps). Cosine and explained "
              "variance on validation; off-data is the share of ||W||_F^2 outside the principal "
              "directions that hold 99% of the training embeddings' variance, beyond r the share "
              "beyond its own top r singular values (what the SVD throws away)."]
    return "\n".join(lines)


def replace_between(text: str, start: str, end: str, body: str) -> str:
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
    """A bench/real_model.py record as a table, then per budget which option to pick."""
    env, total = record["environment"], record["encoder_linear_weights"]
    lines = [f"`python bench/real_model.py` ({env['device_name']}, {env['torch_threads']} "
             f"thread(s)): {record['model']}, calibrated on {record['calibration_sentences']} "
             f"sentences of {record['corpus']}, measured on {record['held_out_sentences']} "
             "held-out ones. Cosine: of each held-out sentence embedding to the dense model's; "
             "top-1: the share of held-out sentences whose nearest held-out neighbour is the "
             "dense model's; throughput: sentences per second at batch 32, forward only, the "
             "median of the passes with its interquartile range, each variant timed in turns "
             "with the dense model, and the speed-up of the two medians (in brackets: why it "
             "is untrusted); file: the whole model on disk, its float32 token embeddings (which "
             "no variant compresses) included. The figure beside the record plots cosine "
             "against file and speed-up.", "",
             "| variant | encoder weights kept | cosine to dense | top-1 agreement | "
             "sentences / s (IQR) | speed-up | file MB | compress s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in record["variants"].items():
        kept = "int8" if row["weights_kept"] is None else f"{row['weights_kept'] / total:.0%}"
        seconds = row.get("compress_seconds")
        spread = row.get("sentences_per_second_p25_p75")
        flags = f" ({', '.join(row['untrusted'])})" if row.get("untrusted") else ""
        lines.append(f"| {name} | {kept} | {row['cosine_to_dense']:.4f} | "
                     f"{row['top1_neighbour_agreement']:.3f} | "
                     f"{row['sentences_per_second']:.0f}"
                     + ("" if not spread else f" ({spread[0]:.0f}-{spread[1]:.0f})")
                     + f" | {row['speedup_vs_dense']:.2f}x{flags}"
                     + f" | {row['file_bytes'] / 1e6:.1f} | "
                     + ("" if seconds is None else f"{seconds:.1f}") + " |")
    ratios = record.get("output_over_layer_seconds")
    if ratios:
        lines += ["", "The output objective's compression time over the layer objective's "
                  "(`output allocated` over `layer allocated`, one run): "
                  + ", ".join(f"{ratio:.2f}x at {budget}" for budget, ratio in ratios.items())
                  + "."]
    return "\n".join(lines + ["", *frontier_lines(record)])


def frontier_lines(record: dict) -> list[str]:
    """Per budget, which option keeps the most for its size and which runs fastest, against
    int8 of the dense model; and whether low rank ever beats it."""
    variants = record["variants"]
    weight_only = variants.get("dense + int8 weight-only")
    budgets = sorted({name.rsplit(" ", 1)[1] for name in variants
                      if name.startswith("default allocated ") and "+" not in name},
                     key=lambda b: -float(b.rstrip("%")))
    if weight_only is None or not budgets:
        return []
    lines = ["**Which to pick.**"]
    beaten = []
    for budget in budgets:
        mine = {n: r for n, r in variants.items()
                if n.endswith(f" {budget}") or f" {budget} + " in n}
        faithful = max(mine, key=lambda n: mine[n]["cosine_to_dense"])
        trusted = {n: r for n, r in mine.items() if not r.get("untrusted")} or mine
        fastest = max(trusted, key=lambda n: trusted[n]["speedup_vs_dense"])
        best = mine[faithful]
        dominated = (weight_only["cosine_to_dense"] >= best["cosine_to_dense"]
                     and weight_only["file_bytes"] <= best["file_bytes"])
        beaten.append(dominated)
        lines.append(
            f"- At {budget} of the encoder's weights: the most faithful is `{faithful}` (cosine "
            f"{best['cosine_to_dense']:.3f}, {best['file_bytes'] / 1e6:.1f} MB, "
            f"{best['speedup_vs_dense']:.2f}x{_flags(best)}); the fastest trusted `{fastest}` "
            f"({mine[fastest]['speedup_vs_dense']:.2f}x at cosine "
            f"{mine[fastest]['cosine_to_dense']:.3f}). "
            + ("Weight-only int8 of the dense model is both more faithful and smaller "
               f"(cosine {weight_only['cosine_to_dense']:.4f}, "
               f"{weight_only['file_bytes'] / 1e6:.1f} MB): pick it unless speed matters."
               if dominated else "It keeps more per byte than weight-only int8 here."))
    lines.append("")
    lines.append(frontier_verdict(record, beaten))
    return lines


def _flags(row: dict) -> str:
    return f" ({', '.join(row['untrusted'])}: not a finding)" if row.get("untrusted") else ""


def frontier_verdict(record: dict, beaten: list[bool]) -> str:
    """One sentence: does low rank ever keep more per byte than weight-only int8 (`beaten`:
    per budget, whether it does not), and what does it buy instead. The last of
    frontier_lines, which the README quotes."""
    variants = record["variants"]
    weight_only, dynamic = (variants[f"dense + int8 {w}"] for w in ("weight-only", "dynamic"))
    fast = max((r for n, r in variants.items() if not r.get("untrusted")),
               key=lambda r: r["speedup_vs_dense"])
    fast_name = next(n for n, r in variants.items() if r is fast)
    if all(beaten):
        return (f"On {record['model']} ({record['environment']['device_name']}), low rank "
                f"loses to weight-only int8 at every budget measured: int8 keeps cosine "
                f"{weight_only['cosine_to_dense']:.4f} at "
                f"{weight_only['file_bytes'] / 1e6:.1f} MB (float32: "
                f"{variants['dense']['file_bytes'] / 1e6:.1f} MB) but runs at "
                f"{weight_only['speedup_vs_dense']:.2f}x dense on this CPU{_flags(weight_only)}. "
                f"What low rank buys "
                f"is speed: the fastest trusted variant, `{fast_name}`, ran "
                f"{fast['speedup_vs_dense']:.2f}x at cosine {fast['cosine_to_dense']:.3f}"
                + f" (dynamic int8 of the dense model: {dynamic['speedup_vs_dense']:.2f}x"
                  f"{_flags(dynamic)} at {dynamic['cosine_to_dense']:.3f}).")
    return (f"On {record['model']}, low rank keeps more per byte than weight-only int8 at "
            f"{sum(not b for b in beaten)} of {len(beaten)} budgets measured.")


def fitness_splits_section(record: dict) -> str:
    """reference/fitness_splits.json as tables: every head's Spearman at D/20 per split, the
    gap to the dense head and the smallest rank within .01; then task_labels' ablation."""
    schemes, target = list(record["splits"]), record["rank_at_10x"]
    splits = record["splits"]
    folds = len(splits[schemes[0]]["dense"]["per_fold"])
    lines = [f"`python -m distil_rank.benchmark.splits` ({record['rows']} rows, D = "
             f"{record['dim']}, {folds} folds per split, {record['seconds'] / 60:.0f} min): "
             f"Spearman on the held-out fold, mean ± std over the folds, at rank {target} "
             f"({record['compression'][record['ranks'].index(target)]:.1f}x fewer parameters "
             f"in the first layer); in brackets the gap to the dense head (dense minus head, "
             f"fold by fold: mean ± std), and the smallest rank of {record['ranks']} whose "
             f"mean gap is at most "
             f"{record['within']}. **Worst gap at 10x: {record['worst_gap_at_10x']:+.3f}** "
             f"({record['worst_split_at_10x']}).", "",
             "| head | " + " | ".join(schemes) + " | smallest rank within " +
             f"{record['within']} ({', '.join(schemes)}) |",
             "|---|" + "---:|" * (len(schemes) + 1)]
    dense = " | ".join(f"{splits[s]['dense']['mean']:.3f} ± {splits[s]['dense']['std']:.3f}"
                       for s in schemes)
    lines.append(f"| dense Fitness-Head | {dense} | |")
    at = record["ranks"].index(target)
    for method in (*record["compressed_methods"], *record["baselines"]):
        cells = []
        for s in schemes:
            m = splits[s]["methods"][method]
            cells.append(f"{m['spearman'][at]['mean']:.3f} ± {m['spearman'][at]['std']:.3f} "
                         f"({m['gap_at_10x']:+.3f} ± {m['gap_std'][at]:.3f})")
        within = ", ".join(str(splits[s]["methods"][method]["smallest_rank_within"] or "none")
                           for s in schemes)
        kind = "" if method in record["compressed_methods"] else " (baseline)"
        lines.append(f"| `{method}`{kind} | " + " | ".join(cells) + f" | {within} |")
    lines += ["", f"`task_labels` with one part changed, at rank {target} (Spearman, mean ± "
              "std; `task_labels` itself is in the table above):", "",
              "| variant | " + " | ".join(schemes) + " |", "|---|" + "---:|" * len(schemes)]
    for name in splits[schemes[0]]["ablation_at_10x"]:
        cells = [splits[s]["ablation_at_10x"][name] for s in schemes]
        lines.append(f"| {name} | " + " | ".join(f"{c['mean']:.3f} ± {c['std']:.3f}"
                                                  for c in cells) + " |")
    return "\n".join(lines)


def headline_table(summary: RunSummary) -> str:
    """The README's one table: at the default rank, how much of each teacher's output variation
    each compressor keeps, and for a head the task. The student column shows each teacher's own
    student (`student_method`), the figure its JSON key `student_explained_variance` holds."""
    view = summary.results()
    entry = view.entries[summary.teachers[0]].derived()
    lines = [f"Explained variance on the validation rows at rank {summary.target_rank} of "
             f"{summary.input_dim} ({entry['compression']:.1f}x fewer parameters), mean over "
             f"{len(summary.seeds)} seeds ({summary.data_note}). Explained variance is 1 - (the "
             "squared error) / (the teacher output's variance about its mean): 1 is the "
             "teacher, 0 is predicting its mean output, and below 0 is worse than that, so "
             "-1000 is an error a thousand times the output's variance:", "",
             f"| teacher | svd | svd_bias (svd, mean shift in the bias) | published recipe "
             f"(`{RECIPE}`) | closed form (`data_aware`) | student (its `student_method`) | "
             "task Spearman, teacher / best compressed |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    tail = ["", f"The run's own headline (`headline` in the JSON): {summary.headline}"] \
        if summary.headline else []
    for name, e in view.entries.items():
        m = e.methods
        best = max((k for k in ("task_aware", "distil_task") if k in m),
                   key=lambda k: m[k].task_spearman, default=None)
        task = "" if best is None else \
            f"{e.teacher_task_spearman:.3f} / {m[best].task_spearman:.3f} (`{best}`)"
        cells = [f"{m[k].explained_variance:.4g}" for k in ("svd", "svd_bias")] + \
            [f"{m[k].explained_variance:.4f}" for k in (RECIPE, "data_aware")] + \
            [f"{m[e.student_method].explained_variance:.4f} (`{e.student_method}`)", task]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines + tail)


def render(source: Sources) -> dict[Path, str]:
    """The new text of docs/results.md and README.md."""
    summary = source.summary("reference/distil_rank_summary.json")
    speeds = [source.read(f) for f in source.glob("bench/results/speed_*.json")]
    latencies = [(f"`{f}`{_provenance(source.read(f))}", source.read(f)["matrix"])
                 for f in source.glob("bench/results/latency_*.json")]
    calibrations = [source.read(f) for f in source.glob("bench/results/calibrate_*.json")]
    compress_models = [source.read(f) for f in source.glob("bench/results/compress_model_*.json")]
    docs = (ROOT / "docs" / "results.md").read_text()
    docs = replace_between(docs, START, END, results_section(
        summary, speeds, latencies, calibrations, compress_models, source))
    published_run = source.summary("reference/published/distil_rank_summary.json")
    if published_run is not None:
        published = source.read("bench/reference/published_distil_rank.json")
        docs = replace_between(docs, PUBLISHED_START, PUBLISHED_END,
                               published_section(published, published_run, summary))
    ablation = source.read("reference/task_trained_ablation.json")
    if ablation is not None:
        docs = replace_between(docs, ABLATION_START, ABLATION_END, ablation_section(ablation))
    frontier = ""
    for path in source.glob("bench/results/real_model_*.json"):
        if not path.endswith("_quick.json"):
            docs = replace_between(docs, REAL_START, REAL_END,
                                   real_model_section(source.read(path)))
            frontier = (frontier_lines(source.read(path)) or [""])[-1]
    splits = source.read("reference/fitness_splits.json")
    if splits is not None:
        docs = replace_between(docs, SPLITS_START, SPLITS_END, fitness_splits_section(splits))
    readme = replace_between((ROOT / "README.md").read_text(), HEADLINE_START, HEADLINE_END,
                             headline_table(summary))
    if frontier:
        readme = replace_between(readme, FRONTIER_START, FRONTIER_END, frontier)
    return {ROOT / "docs" / "results.md": docs, ROOT / "README.md": readme}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
