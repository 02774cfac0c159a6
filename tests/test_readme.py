"""The README is a front door that stays true: its two commands first, short, no commit named,
every ```python block runnable as written, and its table generated from the committed JSON."""

import re
import subprocess
import sys

import pytest

from conftest import ROOT
from distil_rank.benchmark.compressors import COMPRESSORS
from distil_rank.benchmark.teachers import LINEAR_TEACHERS
from distil_rank.families import FAMILIES


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


# every page with a ```python block: the README, CONTRIBUTING and any page of docs/
DOCUMENTS = [d for d in ["README.md", "CONTRIBUTING.md",
                         *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))]
             if python_blocks(ROOT / d)]


def _prepare_esm_reload(folder, monkeypatch):
    """What docs/api.md's reload block needs and no clone can ship: an ESM-2 compressed by the
    tool into esm-half/, and from_pretrained of any ESM-2 name building the tiny one."""
    import transformers

    from conftest import build_tiny_esm
    from distil_rank.compress import main as compress

    (folder / "tiny-esm").mkdir()
    tiny = build_tiny_esm(folder / "tiny-esm")
    fasta = folder / "proteins.fasta"
    fasta.write_text("".join(f">p{i}\nMKTAYIAKQRGAVL{'ACDEFGHIK'[:i % 9]}\n" for i in range(12)))
    assert compress(["--model", str(tiny), "--fasta", str(fasta), "--budget", "0.5",
                     "--out", str(folder / "esm-half"), "--device", "cpu"]) == 0
    original = transformers.EsmModel.from_pretrained.__func__
    monkeypatch.setattr(transformers.EsmModel, "from_pretrained", classmethod(
        lambda cls, name, **options: original(cls, tiny, **options)))


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_python_block_runs_as_written(root, document, tmp_path, monkeypatch, capsys):
    """Each page's ```python blocks run in turn in one namespace, as a reader follows the page,
    from a fresh folder that holds the shipped embeddings (so nothing is written in the clone)."""
    blocks = python_blocks(root / document)
    for name in ("embeddings_train.pt", "embeddings_val.pt"):
        (tmp_path / name).symlink_to(root / name)
    monkeypatch.chdir(tmp_path)
    if any("load_compressed(model, \"esm-half/" in code for code in blocks):
        _prepare_esm_reload(tmp_path, monkeypatch)
        capsys.readouterr()
    namespace = {"__name__": document.replace("/", "_")}
    # a page's registrations (a compressor, a teacher, a model family) end with its test
    saved = [(registry, dict(registry)) for registry in (COMPRESSORS, FAMILIES, LINEAR_TEACHERS)]
    try:
        for i, code in enumerate(blocks):
            exec(compile(code, f"{document} block {i}", "exec"), namespace)
    finally:
        for registry, entries in saved:
            registry.clear()
            registry.update(entries)
    if document == "README.md":
        out = capsys.readouterr().out
        assert out.startswith("rank ") and "LowRankLinear 16" in out


def test_the_pages_with_code_are_the_ones_expected():
    assert {"README.md", "CONTRIBUTING.md", "docs/api.md"} <= set(DOCUMENTS)
