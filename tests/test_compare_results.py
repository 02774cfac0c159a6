"""scripts/compare_results.py, the check behind every regenerated reference: its verdicts on
figures moved by known amounts, and its refusal of a file that is not a summary."""

import copy
import json

from conftest import load_script


def test_verdicts_follow_the_moves_made_here(tmp_path, root, capsys):
    compare = load_script("scripts/compare_results.py")
    old = json.loads((root / "reference" / "distil_rank_summary.json").read_text())
    new = copy.deepcopy(old)
    scores, std = new["Random"]["methods"], old["Random"]["std"]["methods"]
    scores["data_aware"]["cosine"] += 2 * std["data_aware"]["cosine"]  # outside one std
    scores["svd"]["rel_mse"] += 0.5 * std["svd"]["rel_mse"]  # within
    scores["distil"]["cosine"] *= 1 + 1e-8  # rounding
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(new))
    capsys.readouterr()
    assert compare.main([str(tmp_path / "old.json"), str(tmp_path / "new.json")]) == 1
    lines = capsys.readouterr().out.splitlines()
    verdict = {tuple(line.split()[:3]): line for line in lines[1:-1]}
    assert "OUTSIDE" in verdict["Random", "data_aware", "cosine"]
    assert verdict["Random", "svd", "rel_mse"].endswith("within 1 std")
    assert verdict["Random", "distil", "cosine"].endswith("equal to rounding")
    figures = len(lines) - 2
    assert lines[-1] == (f"{figures} figures: {figures - 3} identical, 1 equal to rounding "
                         f"(1e-06 relative), {figures - 1} within one std, 1 outside")


def test_a_file_that_is_not_a_summary_is_one_line_and_exit_2(tmp_path, root, capsys):
    compare = load_script("scripts/compare_results.py")
    summary = str(root / "reference" / "distil_rank_summary.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    for other, said in {str(tmp_path / "nope.json"): "no such file",
                        str(root / "README.md"): "not JSON",
                        str(tmp_path / "list.json"): "not a distil_rank summary",
                        str(tmp_path): "cannot be read"}.items():
        capsys.readouterr()
        assert compare.main([summary, other]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {other}: {said}") and len(err.splitlines()) == 1, err


def test_a_last_line_names_the_thread_count_where_the_runs_differ_in_it(tmp_path, root, capsys):
    """Another thread count rounds differently (the published preset's `distil` moved beyond
    one std on 1 thread against 2): the comparison says so, and says nothing for like runs."""
    compare = load_script("scripts/compare_results.py")
    old = json.loads((root / "reference" / "distil_rank_summary.json").read_text())
    new = copy.deepcopy(old)
    new["environment"]["torch_threads"] = old["environment"]["torch_threads"] + 1
    for name, summary in (("old", old), ("new", new)):
        (tmp_path / f"{name}.json").write_text(json.dumps(summary))
    capsys.readouterr()
    compare.main([str(tmp_path / "old.json"), str(tmp_path / "old.json")])
    assert not capsys.readouterr().out.splitlines()[-1].startswith("note:")
    compare.main([str(tmp_path / "old.json"), str(tmp_path / "new.json")])
    threads = old["environment"]["torch_threads"]
    assert capsys.readouterr().out.splitlines()[-1].startswith(
        f"note: the runs round differently (threads {threads} -> {threads + 1})")


def test_a_note_names_the_settings_in_which_the_runs_differ(tmp_path, root, capsys):
    """A --quick run against the reference is outside one std for its settings, not its code:
    the note says which settings differ; where it wrote, what it timed and how it printed
    are not among them."""
    compare = load_script("scripts/compare_results.py")
    old = json.loads((root / "reference" / "distil_rank_summary.json").read_text())
    new = copy.deepcopy(old)
    new["config"]["distill"]["steps"] = 60
    new["config"]["num_seeds"] = 1
    new["data"]["train"]["rows"] -= 1
    new["config"].update(out="elsewhere", quiet=not old["config"]["quiet"])
    new["config"]["latency"]["repeats"] = 3
    for name, summary in (("old", old), ("new", new)):
        (tmp_path / f"{name}.json").write_text(json.dumps(summary))
    capsys.readouterr()
    compare.main([str(tmp_path / "old.json"), str(tmp_path / "new.json")])
    rows = old["data"]["train"]["rows"]
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"note: the runs differ in what they measured (data.train.rows {rows} -> {rows - 1}; "
        "distill.steps 1000 -> 60; num_seeds 3 -> 1): a figure outside one std may be the "
        "settings', not the code's")
