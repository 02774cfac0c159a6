"""The layout's rule, checked: the library never imports the benchmark, the kernels import
nothing above them, no module imports in a circle, nothing patches sys.path, and importing the
library loads neither the benchmark nor matplotlib."""

import ast
import re
import subprocess
import sys


def imports_of(path, package_root):
    """Every distil_rank module that `path` imports, at module level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {name for name in found if name.split(".")[0] == package_root}


def modules(root):
    package = root / "distil_rank"
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def test_the_library_never_imports_the_benchmark_and_the_kernels_nothing_above(root):
    for name, path in modules(root):
        found = imports_of(path, "distil_rank")
        if name == "distil_rank.__main__" or name.startswith("distil_rank.benchmark"):
            continue  # the benchmark's entry point, and the benchmark itself
        assert not {m for m in found if m.startswith("distil_rank.benchmark")}, name
        if name.startswith("distil_rank.kernels"):
            assert all(m.startswith("distil_rank.kernels") for m in found), (name, found)


def test_no_module_imports_in_a_circle(root):
    known = dict(modules(root))
    graph = {}
    for name, path in known.items():  # module-level imports only: those run at import time
        tree = ast.parse(path.read_text())
        targets = set()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
        graph[name] = {t for t in targets if t in known and t != name}
    state = {}

    def visit(node, trail):
        state[node] = "open"
        for nxt in graph[node]:
            assert state.get(nxt) != "open", f"import circle: {' -> '.join(trail + [nxt])}"
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for name in graph:
        if name not in state:
            visit(name, [name])


def test_nothing_patches_sys_path(root):
    patches = re.compile(r"sys\.path\.(?:insert|append)\(")
    for path in [*root.glob("*.py"), *root.glob("distil_rank/**/*.py"), *root.glob("bench/*.py"),
                 *root.glob("scripts/*.py"), *root.glob("tests/*.py")]:
        assert not patches.search(path.read_text()), path


def test_importing_the_library_loads_neither_the_benchmark_nor_matplotlib(root):
    code = ("import sys\n"
            "from distil_rank import (LowRankLinear, compress_linear, compress_model,\n"
            "                         load_compressed, save_compressed)\n"
            "import distil_rank.calibrate, distil_rank.embed\n"
            "loaded = [m for m in sys.modules if m.startswith(('distil_rank.benchmark',\n"
            "                                                 'matplotlib'))]\n"
            "print(sorted(loaded))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=root / "tests",
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_functions_stay_short_enough_to_read(root):
    """No function of the package over 60 lines, docstring included, and at most 6 over 50: a
    longer one is split where its parts have names (issue: "Extensible by design")."""
    lengths = {}
    for path in sorted((root / "distil_rank").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                where = f"{path.relative_to(root)}:{node.name}"
                lengths[where] = node.end_lineno - node.lineno + 1
    assert lengths  # the walk found the package's functions
    assert not {w: n for w, n in lengths.items() if n > 60}
    over_50 = {w: n for w, n in lengths.items() if n > 50}
    assert len(over_50) <= 6, over_50
