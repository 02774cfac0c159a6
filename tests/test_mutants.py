"""scripts/mutants.py: which tokens it mutates, and that a mutant is run and undone."""

from conftest import load_script


def test_candidates_are_binary_operators_comparisons_and_small_integers(tmp_path):
    mutants = load_script("scripts/mutants.py")
    package = tmp_path / "distil_rank"
    package.mkdir()
    (package / "m.py").write_text('"""Doc: a < b and 3 - 1."""\n\n\ndef f(a, b, *args):\n'
                                  "    # a comment: x <= y\n"
                                  "    return f(-a, b) if a < b and b - a > 2 else [-1, 12]\n")
    found = {(line, old, new) for _, line, _, _, old, new in mutants.candidates(tmp_path)}
    assert found == {(6, "<", "<="), (6, "and", "or"), (6, "-", "+"), (6, ">", ">="),
                     (6, "2", "3"), (6, "1", "2")}  # not the docstring, the comment, the unary
    # minus of -a and -1, *args, or 12


def test_a_mutant_runs_in_the_copy_and_is_undone(tmp_path):
    mutants = load_script("scripts/mutants.py")
    (tmp_path / "distil_rank").mkdir()
    source = tmp_path / "distil_rank" / "m.py"
    source.write_text("def f(a, b):\n    return a - b\n")
    (tmp_path / "test_m.py").write_text("from distil_rank.m import f\n\n\n"
                                        "def test_f():\n    assert f(3, 1) == 2\n")
    (tmp_path / "distil_rank" / "__init__.py").write_text("")
    [mutant] = mutants.candidates(tmp_path)
    record = mutants.run_mutant(tmp_path, mutant, timeout=120)
    assert record["caught"] and record["code"] == "return a - b" and record["new"] == "+"
    assert source.read_text() == "def f(a, b):\n    return a - b\n"
