"""The GPU record's CPU-side logic, run for real on the CPU: bench/gpu.py's steps, its checks of
what each step wrote, and the README sections built from those files. Nothing here pretends to
be CUDA: on a CUDA machine `bash bench/gpu.sh` runs the same code with --device cuda."""

import json
import subprocess
import sys

import pytest

from conftest import load_script
from distil_rank.benchmark import cli as main


def load(root, relative):
    return load_script(relative)


def test_the_published_preset_and_flags_beside_it():
    config = main.config_from_args(main.create_parser().parse_args(["--preset", "published"]))
    assert (config.data, config.synthetic_dim, config.rank) == ("synthetic", 1280, 64)
    assert config.out == "results/published" and config.preset == "published-1280d"
    recipe = config.distill
    assert (recipe.steps, recipe.lr, recipe.batch_size, recipe.alpha) == (1000, 3e-3, 64, 0.1)
    given = main.create_parser().parse_args(["--preset", "published", "--rank", "32",
                                             "--out", "elsewhere", "--seeds", "1"])
    config = main.config_from_args(given)
    assert (config.rank, config.out, config.num_seeds) == (32, "elsewhere", 1)
    plain = main.config_from_args(main.create_parser().parse_args([]))
    assert (plain.data, plain.rank, plain.out, plain.sweep, plain.preset) == (
        "auto", None, "results", True, None)


@pytest.fixture(scope="module")
def dry_run(root, tmp_path_factory):
    """bench/gpu.py's every step on the CPU, tiny, into a temporary root."""
    out = tmp_path_factory.mktemp("gpu_dry")
    done = subprocess.run([sys.executable, "bench/gpu.py", "--device", "cpu", "--quick",
                           "--root", str(out)], cwd=root, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def test_every_step_runs_and_every_file_names_its_device(dry_run):
    record = json.loads((dry_run / "bench" / "results" / "gpu_run_cpu.json").read_text())
    assert list(record["steps"]) == ["main", "latency", "split_k", "speed", "published"]
    for name, step in record["steps"].items():
        assert step["exit_code"] == 0 and step["files"], name
        for relative in step["files"]:
            payload = json.loads((dry_run / relative).read_text())
            assert payload["environment"]["device_name"].startswith("CPU")
    published = json.loads((dry_run / record["steps"]["published"]["files"][0]).read_text())
    assert published["config"]["preset"] == "published-1280d" and published["real_data"] is False


def test_a_file_from_another_device_is_refused(root, tmp_path):
    gpu = load(root, "bench/gpu.py")
    folder = tmp_path / "results" / "cuda"
    folder.mkdir(parents=True)
    (folder / "distil_rank_summary.json").write_text(json.dumps(
        {"environment": {"device_name": "CPU: some processor"}}))
    with pytest.raises(RuntimeError, match="not cuda"):
        gpu.check_outputs(tmp_path, ["results/cuda/*.json"], "cuda", since=0)
    with pytest.raises(RuntimeError, match="no results/cuda/missing"):
        gpu.check_outputs(tmp_path, ["results/cuda/missing*.json"], "cuda", since=0)


def test_docs_sections_from_the_dry_run(root, dry_run):
    readme = load(root, "scripts/docs_results.py")
    lines = readme.gpu_section(readme.Sources(committed=False, root=dry_run), "results/cpu")
    text = "\n".join(lines)
    assert "### On a GPU" in text and "CPU" in text  # it names the device that ran, whatever it is
    assert "published preset on that GPU" in text
    assert "No GPU run" in "\n".join(readme.gpu_section(readme.Sources(False, dry_run), "none"))

    summary = json.loads((dry_run / "results" / "cpu" / "distil_rank_summary.json").read_text())
    published = json.loads((root / "bench" / "reference" /
                            "published_distil_rank.json").read_text())
    run = readme.RunSummary.from_json(summary)
    table = readme.published_section(published, run, run)
    svd = summary["Random"]["methods"]["svd"]["cosine"]
    recipe = summary["Random"]["methods"]["distil"]["cosine"]
    assert f"| Random: SVD cosine | 0.467 | {svd:.3f} | {svd:.3f} |" in table
    assert f"| Random: improvement | +53.1% | {recipe - svd:+.1%} |" in table
    assert "| Spectral Decay: MSE reduction | 99.2% |" in table
    assert "none of its figures was measured here" in table


def test_only_runs_the_steps_named_in_the_order_named(root, tmp_path, monkeypatch):
    gpu = load(root, "bench/gpu.py")
    ran = []

    def fake_run(command, cwd, timeout):  # what would be run, in order; nothing is
        ran.append(command[1:3])
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(gpu.subprocess, "run", fake_run)
    monkeypatch.setattr(gpu, "check_outputs", lambda *args: ["a file"])
    monkeypatch.setattr(sys, "argv", ["gpu.py", "--device", "cpu", "--root", str(tmp_path),
                                      "--only", "latency", "main"])
    assert gpu.main() == 0
    assert ran == [["bench/latency.py", "--devices"], ["main.py", "--device"]]
    record = json.loads((tmp_path / "bench" / "results" / "gpu_run_cpu.json").read_text())
    assert list(record["steps"]) == ["latency", "main"]
    monkeypatch.setattr(sys, "argv", ["gpu.py", "--only", "lateny"])
    with pytest.raises(SystemExit) as refused:  # a misspelt step is an error, not skipped
        gpu.main()
    assert refused.value.code == 2


def test_a_step_past_the_step_limit_is_stopped_and_the_next_one_runs(root, tmp_path):
    """A real step, really killed: the default run cannot finish in a tenth of a second."""
    done = subprocess.run([sys.executable, "bench/gpu.py", "--device", "cpu", "--quick",
                           "--root", str(tmp_path), "--step-limit", "0.1", "--only", "main",
                           "split_k"], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    record = json.loads((tmp_path / "bench" / "results" / "gpu_run_cpu.json").read_text())
    assert list(record["steps"]) == ["main", "split_k"]  # the second still ran
    for step in record["steps"].values():
        assert step["exit_code"] is None and step["error"] == "stopped at the step limit of 0.1 s"
        assert "files" not in step


@pytest.mark.parametrize("script, argv, said", [
    ("bench/latency.py", ["--dim", "8", "--rank", "9"], "--rank 9: above --dim 8"),
    ("bench/latency.py", ["--dim", "0"], "argument --dim: 0: at least 1"),
    ("bench/latency.py", ["--out-dir", "README.md"],
     "argument --out-dir: README.md: exists and is not"),
    ("bench/speed.py", ["--device", "tpu"], "--device 'tpu': unknown device"),
    ("bench/speed.py", ["--students", "7"], "--students 7: a multiple of 6"),
    ("bench/gpu.py", ["--device", "cpu", "--root", "README.md"], "--root README.md: exists"),
    ("scripts/mutants.py", ["--count", "-1"], "argument --count: -1: at least 1"),
    ("scripts/make_tem1_split.py", ["--source", "README.md"], "--source README.md: cannot be "),
    ("scripts/task_trained_ablation.py", ["--out", "x.txt"], "--out x.txt: expected a .json"),
])
def test_a_script_refuses_a_mistake_in_one_line_before_any_work(script, argv, said, root,
                                                                monkeypatch, capsys):
    module = load_script(script)
    monkeypatch.chdir(root)
    monkeypatch.setattr(sys, "argv", [script, *argv])
    with pytest.raises(SystemExit) as done:
        module.main()
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.startswith(f"error: {said}"), err
    assert len(err.splitlines()) == 1, err
