"""The package installs from a clone and imports from any folder, with its console scripts."""

import os
import shutil
import subprocess
import sys

import pytest


def test_pip_installs_the_package_and_its_console_scripts(tmp_path, root):
    pytest.importorskip("setuptools")
    source = tmp_path / "clone"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(root / name, source / name)
    shutil.copytree(root / "distil_rank", source / "distil_rank",
                    ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                           "--no-build-isolation", "--target", str(target), str(source)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(target))
    check = subprocess.run([sys.executable, "-c", "import distil_rank.api, distil_rank.calibrate; "
                            "print(distil_rank.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip().startswith(str(target))
    assert (target / "distil_rank" / "benchmark" / "templates" / "headline.md").is_file()
    for script in ("distil-rank", "distil-rank-embed", "distil-rank-calibrate",
                   "distil-rank-compress"):
        path = target / "bin" / script
        assert path.exists(), script
        ran = subprocess.run([sys.executable, str(path), "--help"], cwd=elsewhere, env=env,
                             capture_output=True, text=True)
        assert ran.returncode == 0 and "usage:" in ran.stdout, ran.stderr
        wrong = subprocess.run([sys.executable, str(path), "--no-such-flag"], cwd=elsewhere,
                               env=env, capture_output=True, text=True)
        assert wrong.returncode == 2 and f"(see {script} --help)" in wrong.stderr, wrong.stderr
    version = subprocess.run([sys.executable, str(target / "bin" / "distil-rank"), "--version"],
                             cwd=elsewhere, env=env, capture_output=True, text=True)
    from distil_rank import __version__
    assert version.stdout.strip() == f"distil-rank {__version__}"
    metadata = subprocess.run([sys.executable, "-c", "import importlib.metadata as m; "
                               "print(m.version('distil-rank'))"], cwd=elsewhere, env=env,
                              capture_output=True, text=True)
    assert metadata.stdout.strip() == __version__  # pyproject.toml reads the package's


def test_python_dash_m_runs_the_benchmark_command_line(root):
    done = subprocess.run([sys.executable, "-m", "distil_rank", "--version"], cwd=root,
                          capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("distil-rank "), done.stderr
    done = subprocess.run([sys.executable, "-m", "distil_rank", "--help"], cwd=root,
                          capture_output=True, text=True)
    assert "--threads" in done.stdout and "--quiet" in done.stdout
    for line in done.stdout.splitlines():  # each default said once, not twice
        assert line.count("default") <= 1, line


@pytest.mark.parametrize("module", ["distil_rank.embed", "distil_rank.calibrate",
                                    "distil_rank.compress", "distil_rank.benchmark.splits"])
def test_a_module_run_with_dash_m_names_itself_in_its_errors(root, module):
    done = subprocess.run([sys.executable, "-m", module, "--no-such-flag"], cwd=root,
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and len(done.stderr.splitlines()) == 1
    assert f"(see python -m {module} --help)" in done.stderr, done.stderr
