"""The README is a front door that stays true: its two commands first, short, no commit named,
every ```python block runnable as written, and its table generated from the committed JSON."""

import re
import subprocess
import sys

import pytest


def test_readme_starts_with_the_two_commands_and_stays_short(root):
    text = (root / "README.md").read_text()
    first = "\n".join(text.splitlines()[:5])
    assert "pip install -r requirements.txt && python main.py" in first
    assert "python -m pytest" in first
    assert len(text.splitlines()) <= 200
    assert not re.search(r"\b[0-9a-f]{7,40}\b", text), "the README names no commit"


def test_docs_results_are_generated_from_the_committed_records(root):
    done = subprocess.run([sys.executable, "scripts/docs_results.py", "--check"], cwd=root,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def python_blocks(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


@pytest.mark.parametrize("document", ["README.md", "CONTRIBUTING.md"])
def test_every_python_block_runs_as_written(root, document, monkeypatch, capsys):
    blocks = python_blocks(root / document)
    assert blocks, f"{document} has no python block"
    monkeypatch.chdir(root)
    for i, code in enumerate(blocks):
        exec(compile(code, f"{document} block {i}", "exec"), {"__name__": f"{document}_{i}"})
    if document == "README.md":
        out = capsys.readouterr().out
        assert out.startswith("rank ") and "LowRankLinear 16" in out
