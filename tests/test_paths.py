"""Every repository path that the docs, help texts, comments and docstrings name exists: a
renamed file must not leave a pointer to nowhere behind."""

import re
import subprocess

# a path of the repository, as prose names it: a top-level folder of the repository, then a
# file or folder name; placeholders (<gpu>, {a,b}, *) and names cut at a placeholder are not
# single paths
PATH = re.compile(r"(?<![\w./-])((?:distil_rank|bench|scripts|reference|docs|tests|\.ci)"
                  r"/[\w./-]*\w)(?![\w<{*])")
# written by a command that needs a GPU: named in docs/gpu.md as what that run records
WRITTEN_ON_A_GPU = {"bench/results/gpu_run_cuda.json"}


def test_every_named_repository_path_exists(root):
    listed = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True,
                            check=True).stdout.split()
    sources = [f for f in listed if f.endswith((".py", ".md", ".toml", ".sh", ".ini"))
               or f == ".ci/run"]
    missing = {}
    for source in sources:
        for match in PATH.finditer((root / source).read_text(errors="replace")):
            path = match.group(1).rstrip(".")
            if path.endswith("_") or path in WRITTEN_ON_A_GPU:  # a name's prefix, or a GPU's
                continue
            if not (root / path).exists():
                missing.setdefault(path, []).append(source)
    assert not missing, missing
