"""main.py end to end: a --quick run writes valid JSON and a PNG, is reproducible, and every
user mistake ends with one line on stderr, exit code 2 and nothing in --out touched."""

import json
import math
import re
import subprocess
import sys

import pytest
import torch

from conftest import load_script
from distil_rank.benchmark import cli as main
from distil_rank.benchmark.compressors import COMPRESSORS, HEAD_COMPRESSORS
from distil_rank.benchmark.report import FIGURE_NAME, SUMMARY_NAME

PUBLISHED_KEYS = ("svd_cosine", "svd_rel_mse", "student_cosine", "student_rel_mse",
                  "cosine_improvement", "mse_reduction", "latency_teacher_ms",
                  "latency_student_ms", "speedup", "params_teacher", "params_student",
                  "compression")
TIMING_KEYS = {"fit_seconds", "latency_teacher_ms", "latency_student_ms", "speedup", "latency",
               "latency_matrix", "environment", "distill_alone_seconds",
               "headline"}  # the headline quotes the speedup


def quick_args(root, out) -> list[str]:
    return ["--quick", "--out", str(out), "--train", str(root / "embeddings_train.pt"),
            "--val", str(root / "embeddings_val.pt")]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, root):
    out = tmp_path_factory.mktemp("quick")
    assert main.main(quick_args(root, out)) == 0
    return out


@pytest.fixture(scope="module")
def piped_run(tmp_path_factory, root):
    """The same run again, in a process of its own whose stdout is a pipe: (its folder, what it
    printed)."""
    out = tmp_path_factory.mktemp("piped")
    done = subprocess.run([sys.executable, "main.py", *quick_args(root, out)], cwd=root,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return out, done.stdout


def test_quick_run_writes_json_and_png(quick_run, root):
    summary = json.loads((quick_run / SUMMARY_NAME).read_text())
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((root / "reference" / "distil_rank_summary.schema.json").read_text())
    jsonschema.validate(summary, schema, cls=jsonschema.Draft202012Validator)
    assert summary["real_data"] is True
    assert summary["input_dim"] == 320 and summary["target_rank"] == 16
    assert summary["config"]["quick"] is True
    assert summary["environment"]["torch"] == torch.__version__
    assert summary["teachers"] == ["Random", "Task-Trained", "Spectral", "Fitness-Head"]
    for teacher in summary["teachers"]:
        entry = summary[teacher]
        for key in PUBLISHED_KEYS:
            assert math.isfinite(entry[key]), (teacher, key)
        linear = set(COMPRESSORS)  # the registry is the one list
        assert {"svd", "svd_bias", "data_aware", "distil", "distil_da"} <= linear
        svd, shifted = (entry["methods"][m]["explained_variance"] for m in ("svd", "svd_bias"))
        assert shifted >= svd  # the same factors, less the mean offset
        if teacher == "Fitness-Head":  # a head gets the task-aware compressors too, and only it
            assert set(entry["methods"]) == linear | set(HEAD_COMPRESSORS)
            assert entry["student_method"] == "distil_task"
            assert entry["student_cosine"] == entry["methods"]["distil_task"]["cosine"]
            methods = entry["methods"]
            assert methods["task_aware"]["task_spearman"] > methods["data_aware"]["task_spearman"]
            task = methods["distil_task"]
            assert task["selection_mse_chosen"] <= task["selection_mse_warm_start"]
            assert len(entry["sweep"]["methods"]["task_aware"]["task_spearman"]) == 3
        else:
            assert set(entry["methods"]) == linear and entry["student_method"] == "distil_da"
        assert entry["params_teacher"] == 320 * 320 + 320
        assert entry["params_student"] == 16 * 640 + 320
        for method in entry["methods"].values():
            assert -math.inf < method["explained_variance"] <= 1
            assert "spearman" in method
        # the project's student is never worse than its warm start on the selection rows
        da = entry["methods"]["distil_da"]
        assert da["selection_mse_chosen"] <= da["selection_mse_warm_start"]
        # closed form beats the data-free SVD on held-out data
        assert entry["methods"]["data_aware"]["explained_variance"] > \
            entry["methods"]["svd"]["explained_variance"]
    assert (quick_run / FIGURE_NAME).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quick_run_has_seed_statistics_sweep_and_latency_matrix(quick_run):
    summary = json.loads((quick_run / SUMMARY_NAME).read_text())
    assert summary["seeds"] == [0, 1]
    for teacher in summary["teachers"]:
        entry = summary[teacher]
        assert len(entry["per_seed"]) == 2
        per_seed = [s["methods"]["data_aware"]["explained_variance"] for s in entry["per_seed"]]
        assert entry["methods"]["data_aware"]["explained_variance"] == pytest.approx(
            sum(per_seed) / 2)
        assert entry["std"]["methods"]["data_aware"]["explained_variance"] == pytest.approx(
            abs(per_seed[0] - per_seed[1]) / math.sqrt(2))
        sweep = entry["sweep"]
        assert sweep["ranks"] == [8, 16, 32]
        assert sweep["closed_form_max_abs_gap"] < 1e-4  # float32 students against the exact curve
        assert len(sweep["closed_form_train_explained_variance"]) == 321
    effective = summary["data"]["effective_rank"]
    assert 1 < effective["participation_ratio"] < 320
    assert effective["components_for_90pct"] <= effective["components_for_99pct"]
    matrix = summary["latency_matrix"]["cpu"]
    assert [r["batch"] for r in matrix["rows"]] == [1, 32, 256]
    assert matrix["threads"] == torch.get_num_threads()


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items()
                if k not in TIMING_KEYS and k != "config"}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def test_same_seed_same_metrics(quick_run, piped_run):
    """The same arguments in another process give the same figures, to the bit."""
    first = json.loads((quick_run / SUMMARY_NAME).read_text())
    second = json.loads((piped_run[0] / SUMMARY_NAME).read_text())
    assert _without_timings(first) == _without_timings(second)


def test_synthetic_mode_says_so_and_plants_a_task(tmp_path, capsys):
    out = tmp_path / "synthetic"
    assert main.main(["--quick", "--data", "synthetic", "--no-sweep", "--seeds", "1", "--out",
                      str(out)]) == 0
    summary = json.loads((out / SUMMARY_NAME).read_text())
    assert summary["real_data"] is False
    assert summary["input_dim"] == 256 and summary["target_rank"] == 256 // 20
    assert "SYNTHETIC" in capsys.readouterr().out
    assert "fitness" in summary["data"]["provenance"]  # the planted label says what it is
    assert summary["teachers"][-1] == "Fitness-Head" and summary["skipped_teachers"] == {}


def test_without_labels_the_head_is_skipped_and_said_so(tmp_path, root, capsys):
    from distil_rank.embeddings import load_embeddings

    for split in ("train", "val"):  # bare tensors: no fitness
        torch.save(load_embeddings(root / f"embeddings_{split}.pt").embeddings[:300],
                   tmp_path / f"{split}.pt")
    out = tmp_path / "out"
    files = ["--train", str(tmp_path / "train.pt"), "--val", str(tmp_path / "val.pt")]
    assert main.main(["--quick", "--seeds", "1", "--no-sweep", "--out", str(out), *files]) == 0
    summary = json.loads((out / SUMMARY_NAME).read_text())
    assert "Fitness-Head" not in summary["teachers"] and "Fitness-Head" not in summary
    assert "fitness" in summary["skipped_teachers"]["Fitness-Head"]
    assert "Fitness-Head teacher and the fitness probe skipped" in capsys.readouterr().out
    assert "teacher_spearman" not in summary["Random"]  # no labels, no downstream probe


def test_too_few_training_rows_for_a_head_skip_it_and_say_why(tmp_path, root, capsys):
    """Two labelled training rows: the selection split leaves one fit row, whose
    standardisation is NaN. The head is skipped with the reason, not a traceback."""
    data = torch.load(root / "embeddings_train.pt", weights_only=True)
    torch.save({k: v[:2] for k, v in data.items() if k in ("embeddings", "fitness")},
               tmp_path / "two.pt")
    out = tmp_path / "out"
    assert main.main(["--quick", "--seeds", "1", "--no-sweep", "--out", str(out), "--train",
                      str(tmp_path / "two.pt"), "--val", str(root / "embeddings_val.pt")]) == 0
    summary = json.loads((out / SUMMARY_NAME).read_text())
    why = summary["skipped_teachers"]["Fitness-Head"]
    assert "2 training rows leave 1 fit row(s)" in why and why in capsys.readouterr().out


def test_a_head_whose_task_is_undefined_is_said_so_never_nan(root):
    """Constant validation fitness leaves every task Spearman undefined (null): the headline
    and the task table say so, and the head stays a head (its layer joins no linear span)."""
    import re

    from distil_rank.benchmark import report
    from distil_rank.benchmark.results import RunSummary

    summary = json.loads((root / "reference" / SUMMARY_NAME).read_text())
    before = report.headline(RunSummary.from_json(summary))
    head = summary["Fitness-Head"]
    head["teacher_task_spearman"] = None
    for scores in head["methods"].values():
        scores["task_spearman"] = None
    loaded = RunSummary.from_json(summary)
    text = report.headline(loaded)
    table = "\n".join(report.task_table(loaded.results(), console=True))
    assert not re.search(r"\bnan\b", text + table, re.IGNORECASE)
    assert "The Fitness-Head's Spearman rho on the measured fitness is not computable" in text
    assert text.split(". ")[0] == before.split(". ")[0]  # the linear teachers' span, unchanged
    rows = [line.split() for line in table.splitlines()[2:]]
    assert len(rows) == 1 + len(head["methods"]) and all(row[-4] == "n/a" for row in rows[1:])


def bad_cases(tmp, root):
    train, val = str(root / "embeddings_train.pt"), str(root / "embeddings_val.pt")
    torch.save(torch.randn(10, 7), tmp / "d7.pt")
    torch.save(torch.randn(1, 320), tmp / "one_row.pt")
    torch.save(torch.randn(320), tmp / "flat.pt")
    nan = torch.randn(10, 320)
    nan[3, 3] = float("nan")
    torch.save(nan, tmp / "nan.pt")
    torch.save("not a tensor", tmp / "text.pt")
    cases = {
        "missing": ["--train", str(tmp / "nope.pt"), "--val", val],
        "dims": ["--train", train, "--val", str(tmp / "d7.pt")],
        "one_row": ["--train", train, "--val", str(tmp / "one_row.pt")],
        "flat": ["--train", str(tmp / "flat.pt"), "--val", val],
        "nan": ["--train", train, "--val", str(tmp / "nan.pt")],
        "text": ["--train", str(tmp / "text.pt"), "--val", val],
        "rank0": ["--train", train, "--val", val, "--rank", "0"],
        "rank_d": ["--train", train, "--val", val, "--rank", "320"],
        "device": ["--train", train, "--val", val, "--device", "tpu"],
        "device_word": ["--train", train, "--val", val, "--device", "banana"],
    }
    if not torch.cuda.is_available():
        cases["no_cuda"] = ["--train", train, "--val", val, "--device", "cuda"]
    return cases


def test_bad_input_is_one_line_exit_2_and_out_untouched(tmp_path, root, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / SUMMARY_NAME).write_text("previous results")
    for name, argv in bad_cases(tmp_path, root).items():
        capsys.readouterr()
        code = main.main(["--quick", "--out", str(out), *argv])
        err = capsys.readouterr().err
        assert code == 2, name
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, err)
        assert "Traceback" not in err
    assert (out / SUMMARY_NAME).read_text() == "previous results"
    assert sorted(p.name for p in out.iterdir()) == [SUMMARY_NAME]


def test_a_piped_run_shows_its_stages_before_its_first_table_and_quiet_shows_only_the_end(
        piped_run, tmp_path, root, capsys):
    lines = piped_run[1].splitlines()  # a real pipe: what is flushed, and when
    first_table = next(i for i, line in enumerate(lines) if line.startswith("teacher "))
    stages = [line for line in lines[:first_table] if re.match(r"\[ *\d+\.\d s\] ", line)]
    assert len(stages) >= 3 and "then" in stages[0]
    assert all(len(line) <= 100 for line in lines[first_table:] if "  " in line)  # aligned
    assert not any(line.startswith("|") for line in lines)  # no Markdown on the console
    capsys.readouterr()
    # --quiet's one line, from a run in this process
    assert main.main(["--quick", "--no-sweep", "--seeds", "1", "--out", str(tmp_path / "quiet"),
                      "--quiet", "--train", str(root / "embeddings_train.pt"),
                      "--val", str(root / "embeddings_val.pt")]) == 0
    quiet = capsys.readouterr().out
    assert quiet.strip().startswith("wrote ") and len(quiet.strip().splitlines()) == 1


def test_quick_writes_to_its_own_folder_by_default():
    assert main.config_from_args(main.create_parser().parse_args(["--quick"])).out == \
        "results/quick"
    assert main.config_from_args(main.create_parser().parse_args([])).out == "results"


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--train", "--val", "--data", "--rank", "--steps", "--device", "--seed",
                   "--out", "--quick"):
        assert option in text


def _small_run(out, root) -> dict:
    """A --quick run of one seed without the sweep on the shipped data; its summary."""
    assert main.main(["--quick", "--seeds", "1", "--no-sweep", "--out", str(out),
                      "--train", str(root / "embeddings_train.pt"),
                      "--val", str(root / "embeddings_val.pt")]) == 0
    return json.loads((out / SUMMARY_NAME).read_text())


def test_a_registered_teacher_and_compressor_run_validate_and_are_drawn(tmp_path, root,
                                                                        monkeypatch):
    """A fifth teacher and two new compressors, each registered from this file alone (one as
    a Compressor entry with its label and colour, one as a bare function with facts of its
    own): a --quick run fits every compressor on every teacher, measures and reports them,
    writes a summary that the committed schema accepts, draws its figure with five teachers,
    and the docs generator's results section holds them (one run: each is a small run)."""
    jsonschema = pytest.importorskip("jsonschema")
    from distil_rank.benchmark import compressors, teachers
    from distil_rank.lowrank import LowRankLinear, seeded_linear

    def low_rank_teachers(train_x, settings, seeds):  # an exactly rank-8 layer per seed
        built = []
        for seed in seeds:
            g = torch.Generator().manual_seed(seed)
            dim = train_x.shape[1]
            layer = seeded_linear(dim, dim, g)
            with torch.no_grad():
                layer.weight.copy_(LowRankLinear(dim, dim, 8, generator=g).dense_weight())
            built.append(teachers.Teacher(layer.requires_grad_(False)))
        return built

    def fit_truncated_twice(teacher, rank, context):  # svd at rank // 2: a worse svd
        from distil_rank.lowrank import compress_svd
        return compressors.Student(compress_svd(teacher, max(1, rank // 2)), fit_seconds=0.0)

    def fit_random_factors(teacher, rank, context):  # a bare function: its key is its name
        g = torch.Generator().manual_seed(context.seed)
        module = LowRankLinear(teacher.in_features, teacher.out_features, rank, generator=g)
        return compressors.Student(module, fit_seconds=0.0, details={"note_value": 1.5})

    monkeypatch.setitem(teachers.LINEAR_TEACHERS, "Rank-8", low_rank_teachers)
    monkeypatch.setitem(compressors.COMPRESSORS, "half_svd", compressors.Compressor(
        fit_truncated_twice, "half_svd (svd at half the rank)", "tab:red"))
    monkeypatch.setitem(compressors.COMPRESSORS, "random_factors", fit_random_factors)
    out = tmp_path / "five"
    summary = _small_run(out, root)
    assert summary["teachers"] == ["Random", "Task-Trained", "Spectral", "Rank-8",
                                   "Fitness-Head"]
    schema = json.loads((root / "reference" / "distil_rank_summary.schema.json").read_text())
    jsonschema.validate(summary, schema, cls=jsonschema.Draft202012Validator)
    rank8 = summary["Rank-8"]["methods"]
    assert rank8["svd"]["explained_variance"] == pytest.approx(1.0, abs=1e-4)  # r=16 >= 8
    assert "half_svd" in summary["methods"] and "random_factors" in summary["methods"]
    for teacher in summary["teachers"]:
        methods = summary[teacher]["methods"]
        assert methods["half_svd"]["rank"] == methods["svd"]["rank"] // 2
        random = methods["random_factors"]
        assert random["explained_variance"] < methods["data_aware"]["explained_variance"]
        assert random["note_value"] == 1.5 and random["params"] == 16 * 640 + 320
    assert (out / FIGURE_NAME).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    docs = load_script("scripts/docs_results.py")  # the docs' results section, generated
    section = docs.results_section(docs.RunSummary.from_json(summary), [], [], [], [],
                                   docs.Sources(committed=False, root=tmp_path))
    assert "| Rank-8 |" in section and "| half_svd (svd at half the rank) |" in section
    colours = compressors.method_colours(summary["methods"] + ["bare_function"])
    assert colours["half_svd"] == "tab:red" and colours["svd"] == "tab:gray"  # their own
    assert colours["bare_function"] not in {c for m, c in colours.items() if m != "bare_function"}


def test_a_rank_that_saves_nothing_is_said_so_and_not_called_fewer_parameters(tmp_path, root,
                                                                             capsys):
    """Above half the width the two factors hold more weights than the dense layer: the run
    says so at the start, and its headline counts the parameters the other way round
    (320 x 320 with bias: 102,720; rank 200: 200 x 640 + 320 = 128,320, 1.25x more)."""
    assert main.main(["--quick", "--seeds", "1", "--no-sweep", "--rank", "200", "--out",
                      str(tmp_path), "--train", str(root / "embeddings_train.pt"),
                      "--val", str(root / "embeddings_val.pt")]) == 0
    out = capsys.readouterr().out
    assert "note: at rank 200 of 320 the factors hold no fewer weights than the dense layer " \
           "(fewer at rank 159 and below)" in out
    summary = json.loads((tmp_path / SUMMARY_NAME).read_text())
    assert "At rank 200 of 320 (1.25x more parameters)" in summary["headline"]
    assert "fewer parameters" not in summary["headline"]


def test_size_words_count_parameters_both_ways():
    from distil_rank.benchmark.report import size_words
    from distil_rank.lowrank import lowrank_parameters

    dense = 320 * 320 + 320
    assert size_words(dense / lowrank_parameters(320, 320, 16)) == "9.7x fewer parameters"
    assert size_words(dense / lowrank_parameters(320, 320, 160)) == "as many parameters"
    assert size_words(dense / lowrank_parameters(320, 320, 200)) == "1.25x more parameters"
