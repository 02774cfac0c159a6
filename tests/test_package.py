"""The package installs from a clone and imports from any folder, with its console scripts."""

import json
import os
import shutil
import subprocess
import sys

import pytest

RUN_SCRIPTS = """
import contextlib, io, json, runpy, sys
from pathlib import Path
folder, calls, results = Path(sys.argv[1]), json.loads(sys.argv[2]), []
for script, flag in calls:
    sys.argv = [str(folder / script), flag]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(sys.argv[0], run_name="__main__")
            code = 0
        except SystemExit as done:
            code = 0 if done.code is None else done.code
    results.append([code, out.getvalue(), err.getvalue()])
print(json.dumps(results))
"""


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
    scripts = ("distil-rank", "distil-rank-embed", "distil-rank-calibrate", "distil-rank-compress")
    for script in scripts:
        assert (target / "bin" / script).exists(), script
    # Every installed script file, run as its own __main__ with --help, with a wrong flag and
    # (distil-rank) with --version, in one interpreter: torch is imported once, not nine times.
    calls = [(script, flag) for script in scripts for flag in ("--help", "--no-such-flag")]
    ran = json.loads(subprocess.run(
        [sys.executable, "-c", RUN_SCRIPTS, str(target / "bin"), json.dumps(
            [*calls, ("distil-rank", "--version")])],
        cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout)
    for (script, flag), (code, out, err) in zip(calls, ran):
        if flag == "--help":
            assert code == 0 and "usage:" in out, (script, err)
        else:
            assert code == 2 and f"(see {script} --help)" in err, (script, err)
            assert err.startswith("error: ") and len(err.splitlines()) == 1, (script, err)
    from distil_rank import __version__
    assert ran[-1][:2] == [0, f"distil-rank {__version__}\n"]
    metadata = subprocess.run([sys.executable, "-c", "import importlib.metadata as m; "
                               "print(m.version('distil-rank'))"], cwd=elsewhere, env=env,
                              capture_output=True, text=True)
    assert metadata.stdout.strip() == __version__  # pyproject.toml reads the package's


RUN_MODULES = """
import contextlib, io, json, runpy, sys
calls, results = json.loads(sys.argv[1]), []
for module, flag in calls:
    sys.argv = [module, flag]  # run_module puts the module's file first, as python -m does
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as done:
            code = 0 if done.code is None else done.code
    results.append([code, out.getvalue(), err.getvalue()])
print(json.dumps(results))
"""

MODULES = ["distil_rank.embed", "distil_rank.calibrate", "distil_rank.compress",
           "distil_rank.benchmark.splits"]


def test_python_dash_m_runs_every_command_and_names_it_in_its_errors(root):
    """python -m distil_rank (--version, --help), and each command module with a wrong flag,
    each run as __main__ the way python -m runs it, in one interpreter (torch imported once)."""
    calls = [("distil_rank", "--version"), ("distil_rank", "--help"),
             *((module, "--no-such-flag") for module in MODULES)]
    ran = json.loads(subprocess.run([sys.executable, "-c", RUN_MODULES, json.dumps(calls)],
                                    cwd=root, capture_output=True, text=True,
                                    check=True).stdout)
    (code, version, _), (_, usage, _) = ran[:2]
    assert code == 0 and version.startswith("distil-rank ")
    assert "--threads" in usage and "--quiet" in usage
    for line in usage.splitlines():  # each default said once, not twice
        assert line.count("default") <= 1, line
    for module, (code, _, err) in zip(MODULES, ran[2:]):
        assert code == 2
        assert err.startswith("error: ") and len(err.splitlines()) == 1, err
        assert f"(see python -m {module} --help)" in err, err


def test_an_options_help_gives_its_default_where_its_words_do_not():
    from distil_rank.errors import OneLineParser

    p = OneLineParser(prog="x")
    p.add_argument("--rows", type=int, default=1000)
    p.add_argument("--share", type=float, default=0.5, help="a share, 50%% of it")
    p.add_argument("--budget", default="80%", help="a budget")
    p.add_argument("--batches", default=(1, 32))
    p.add_argument("--steps", type=int, default=7, help="steps (default: 7 a seed)")
    p.add_argument("--flag", action="store_true", help="a switch")
    p.add_argument("--name", default=None, help="resolved later")
    p.add_argument("--only", default="", help="a filter")
    text = " ".join(p.format_help().split())
    assert "--rows ROWS (default: 1000)" in text
    assert "a share, 50% of it (default: 0.5)" in text  # argparse's %% in the words
    assert "a budget (default: 80%)" in text  # a % in the default
    assert "(default: 1,32)" in text
    assert "steps (default: 7 a seed)" in text and "(default: 7)" not in text
    for words in ("a switch", "resolved later", "a filter"):
        assert f"{words} (default" not in text
