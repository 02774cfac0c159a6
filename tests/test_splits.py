"""Position splits of the fitness heads (distil_rank.benchmark.splits)."""

import json
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from distil_rank.benchmark import splits
from distil_rank.benchmark.teachers import HeadSettings, fitness_head, train_heads
from distil_rank.distill import DistillSettings
from distil_rank.embeddings import EmbeddingSet, save_embeddings
from distil_rank.lowrank import LowRankLinear
from distil_rank.metrics import spearman


def positions(n: int = 600, sites: int = 37, seed: int = 0) -> torch.Tensor:
    return torch.randint(sites, (n,), generator=torch.Generator().manual_seed(seed)) + 3


def test_modulo_folds_are_the_position_mod_the_fold_count():
    position = positions()
    fold = splits.assign_folds(position, "modulo", 5, seed=0)
    assert all(int(f) == int(p) % 5 for f, p in zip(fold, position))


def test_contiguous_folds_are_blocks_of_consecutive_positions_of_near_equal_count():
    position = positions()
    fold = splits.assign_folds(position, "contiguous", 5, seed=0)
    distinct = sorted(set(position.tolist()))
    per_fold = [sorted({int(p) for p, f in zip(position, fold) if f == k}) for k in range(5)]
    assert [p for block in per_fold for p in block] == distinct  # in order, each once
    assert max(map(len, per_fold)) - min(map(len, per_fold)) <= 1


def test_random_folds_deal_the_rows_evenly_and_depend_on_the_seed():
    position = positions()
    fold = splits.assign_folds(position, "random", 5, seed=1)
    assert torch.bincount(fold).tolist() == [120] * 5
    assert not torch.equal(fold, splits.assign_folds(position, "random", 5, seed=2))


def test_position_selection_holds_out_whole_positions():
    position = positions()
    rows = torch.nonzero(splits.assign_folds(position, "modulo", 5, 0) != 0).squeeze(1)
    fit, selection = splits.selection_rows(rows, position, "modulo", 0.2, seed=3)
    assert sorted(torch.cat([fit, selection]).tolist()) == rows.tolist()
    assert not set(position[fit].tolist()) & set(position[selection].tolist())
    assert len(set(position[selection].tolist())) == round(0.2 * len(set(position[rows].tolist())))


def test_standardised_layer_computes_the_same_function_on_standardised_inputs():
    g = torch.Generator().manual_seed(0)
    layer = LowRankLinear(12, 9, 3, generator=g)
    torch.nn.init.normal_(layer.bias, generator=g)
    x = 4 + 0.1 * torch.randn(50, 12, generator=g)
    mean, std = x.mean(0), x.std(0)
    moved = splits._standardised(layer, mean, std)
    with torch.no_grad():
        torch.testing.assert_close(moved((x - mean) / std), layer(x), atol=1e-5, rtol=1e-5)


def test_pca_inputs_are_the_whitened_top_principal_coordinates():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 8, generator=g) * torch.logspace(0, -1, 8) + 5
    z = splits.pca_inputs(x, 3)(x).double()
    torch.testing.assert_close(torch.cov(z.T), torch.eye(3, dtype=torch.float64), atol=1e-4,
                               rtol=0)
    # the same subspace as the top right singular vectors of the centred rows
    _, _, vh = torch.linalg.svd((x - x.mean(0)).double(), full_matrices=False)
    projector = vh[:3].T @ vh[:3]
    centred = (x - x.mean(0)).double()
    basis = torch.linalg.lstsq(z, centred).solution  # centred ~ z @ basis on the subspace
    torch.testing.assert_close(centred @ projector, z @ basis, atol=1e-4, rtol=1e-4)


def fitness_rows(n: int = 480, dim: int = 16, seed: int = 0):
    """Embeddings of a protein's variants: each position moves the embedding one way, and the
    fitness depends nonlinearly on it."""
    g = torch.Generator().manual_seed(seed)
    position = torch.randint(40, (n,), generator=g)
    site = torch.randn(40, dim, generator=g)
    x = 3 + 0.3 * site[position] + 0.1 * torch.randn(n, dim, generator=g)
    w = torch.randn(dim, generator=g)
    y = torch.tanh(x @ w / dim ** 0.5) + 0.1 * torch.randn(n, generator=g)
    return x, y, position


TINY = splits.SplitSettings(folds=3, divisors=(16, 4), rank_divisor=16,
                            head=HeadSettings(steps=40, eval_every=10),
                            distill=DistillSettings(steps=20, eval_every=10, patience=20))


def test_the_summary_holds_every_split_method_and_its_gap_as_the_per_fold_figures_say():
    x, y, position = fitness_rows()
    summary = splits.run_splits(x, y, position, TINY, progress=lambda line: None)
    assert summary["ranks"] == [1, 4] and summary["rank_at_10x"] == 1
    at = summary["ranks"].index(summary["rank_at_10x"])
    gaps = {}
    for scheme in splits.SCHEMES:
        split = summary["splits"][scheme]
        dense = split["dense"]["per_fold"]
        assert len(dense) == 3
        for method in (*splits.compressed_methods(), *splits.BASELINES):
            row = split["methods"][method]
            per_fold = row["spearman"][at]["per_fold"]
            expected = sum(d - s for d, s in zip(dense, per_fold)) / 3
            assert row["gap_at_10x"] == pytest.approx(expected, abs=1e-12)
            within = [r for r, gap in zip(summary["ranks"], row["gap"]) if gap <= 0.01]
            assert row["smallest_rank_within"] == (within[0] if within else None)
        best = min(splits.compressed_methods(), key=lambda m: split["methods"][m]["gap_at_10x"])
        assert split["gap_at_10x"] == split["methods"][best]["gap_at_10x"]
        assert set(split["ablation_at_10x"]) == set(splits.ABLATION)
        gaps[scheme] = split["gap_at_10x"]
    assert summary["worst_gap_at_10x"] == max(gaps.values())
    # ridge has no rank: one figure, repeated
    ridge = summary["splits"]["random"]["methods"]["ridge"]["spearman"]
    assert ridge[0]["per_fold"] == ridge[1]["per_fold"]


def test_the_refinement_keeps_step_zero_when_nothing_beats_it():
    """task_labels with no steps is the task_aware head it starts from."""
    x, y, position = fitness_rows(seed=1)
    settings = replace(TINY, head=HeadSettings(steps=0, eval_every=10))
    fold_of = splits.assign_folds(position, "modulo", 3, 0)
    rows = torch.nonzero(fold_of != 0).squeeze(1)
    fit, selection = splits.selection_rows(rows, position, "modulo", 0.15, 0)
    fold = splits.Fold(x, y, fit, selection, torch.nonzero(fold_of == 0).squeeze(1), settings, 0)
    teacher = fitness_head(x[fit], y[fit], x[selection], y[selection], HeadSettings(steps=30),
                           0)[0]
    start = splits.compress_folds([fold], [teacher], [2])[0][2]["task_aware"].module
    head = splits.refined(fold, teacher, start, 2)
    train_heads([head.job])
    with torch.no_grad():
        closed = spearman(teacher.readout(start(x[fold.test])).squeeze(-1), y[fold.test])
    assert head.score() == pytest.approx(closed, abs=1e-6)


def test_a_fold_scores_alone_as_it_does_among_all_the_folds():
    """score_folds trains every fold's heads as one stack: each fold's figures are those the
    fold gets when it is scored alone (to a batched product's rounding)."""
    x, y, position = fitness_rows(seed=2)
    folds = [splits.Fold(x, y, fit, selection, test, TINY, 10 + k) for k, (fit, selection, test)
             in enumerate(splits.fold_rows(position, "modulo", TINY))]
    together = splits.score_folds(folds, [1, 4], progress=lambda line: None)
    alone = splits.score_folds(folds[1:2], [1, 4], progress=lambda line: None)[0]
    assert together[1]["dense_chosen_step"] == alone["dense_chosen_step"]
    assert together[1]["rows"] == alone["rows"]
    for method, scores in alone["methods"].items():
        assert together[1]["methods"][method] == pytest.approx(scores, abs=2e-3), method
    assert together[1]["ablation"] == pytest.approx(alone["ablation"], abs=2e-3)


def test_command_refuses_a_file_without_positions_and_writes_nothing(tmp_path):
    x, y, _ = fitness_rows(n=40)
    path = tmp_path / "no_positions.pt"
    save_embeddings(path, EmbeddingSet(embeddings=x, fitness=y))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "distil_rank.benchmark.splits", "--data",
                           str(path), "--out", str(out), "--quick"], capture_output=True,
                          text=True)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "no_positions.pt" in done.stderr
    assert "'position'" in done.stderr
    assert not out.exists() or not any(out.iterdir())


def test_command_refuses_a_file_given_twice(tmp_path):
    x, y, position = fitness_rows(n=40)
    path = tmp_path / "rows.pt"
    save_embeddings(path, EmbeddingSet(embeddings=x, fitness=y, position=position))
    with pytest.raises(splits.InputError, match="given twice"):
        splits.load_rows([str(path), str(tmp_path / "." / "rows.pt")])


def test_command_writes_the_json_and_the_figure_together(tmp_path):
    x, y, position = fitness_rows(n=300)
    path = tmp_path / "rows.pt"
    save_embeddings(path, EmbeddingSet(embeddings=x, fitness=y, position=position))
    out = tmp_path / "out"
    assert splits.main(["--data", str(path), "--out", str(out), "--quick", "--quiet"]) == 0
    summary = json.loads((out / splits.JSON_NAME).read_text())
    assert set(summary["splits"]) == set(splits.SCHEMES)
    assert (out / splits.FIGURE_NAME).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_registered_compressor_is_scored_on_every_split_and_drawn(tmp_path, monkeypatch):
    """A compressor registered from this file alone enters the splits: here one that keeps the
    dense layer as it is, so on every fold its head is the dense head (a gap of exactly 0)."""
    import copy

    from distil_rank.benchmark.compressors import COMPRESSORS, Student

    monkeypatch.setitem(COMPRESSORS, "keep_dense",
                        lambda teacher, rank, context: Student(copy.deepcopy(teacher), 0.0))
    assert "keep_dense" in splits.compressed_methods() and \
        not set(splits.LAYER_ONLY) & set(splits.compressed_methods())
    x, y, position = fitness_rows(n=300)
    path = tmp_path / "rows.pt"
    save_embeddings(path, EmbeddingSet(embeddings=x, fitness=y, position=position))
    assert splits.main(["--data", str(path), "--out", str(tmp_path), "--quick", "--quiet"]) == 0
    summary = json.loads((tmp_path / splits.JSON_NAME).read_text())
    assert "keep_dense" in summary["compressed_methods"]
    for scheme in splits.SCHEMES:
        split = summary["splits"][scheme]
        kept = split["methods"]["keep_dense"]
        assert all(s["per_fold"] == split["dense"]["per_fold"] for s in kept["spearman"])
        assert kept["gap"] == [0.0] * len(summary["ranks"])
    assert (tmp_path / splits.FIGURE_NAME).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_readme_quotes_the_committed_record(root):
    record = json.loads((root / "reference" / splits.JSON_NAME).read_text())
    readme = (root / "README.md").read_text().replace("\n", " ")
    for scheme in splits.SCHEMES:
        split = record["splits"][scheme]
        assert f"{split['dense']['mean']:.3f} ({scheme})" in readme
        assert f"{abs(split['gap_at_10x']):.3f}"[1:] in readme


@pytest.mark.parametrize("change, message", [
    ("nan position", "'position' holds nan, not a whole number"),
    ("fractional position", "'position' holds 3.5, not a whole number"),
    ("positions 3k", "leave modulo fold 1 of 3 empty"),
    ("constant fitness", "every row has fitness 1; Spearman against a constant"),
    ("four rows", "a head needs 2 fit rows of varying fitness, a selection row and 2 test"),
])
def test_command_refuses_rows_a_split_cannot_score_before_any_training(tmp_path, capsys,
                                                                       change, message):
    x, y, position = fitness_rows(n=60)
    position = position.double()
    if change == "nan position":
        position[5] = float("nan")
    elif change == "fractional position":
        position[7] = 3.5
    elif change == "positions 3k":  # every position a multiple of the 3 quick folds
        position = 3 * position
    elif change == "four rows":  # four positions: folds of one or two rows
        x, y, position = x[:4], y[:4], torch.arange(4.0)
    else:
        y = torch.ones_like(y)
    path = tmp_path / "rows.pt"
    torch.save({"embeddings": x, "fitness": y, "position": position}, path)
    out = tmp_path / "out"
    (out).mkdir()
    (out / splits.JSON_NAME).write_text("earlier results")
    code = splits.main(["--data", str(path), "--out", str(out), "--quick", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0] and "rows.pt" in err[0], err
    assert (out / splits.JSON_NAME).read_text() == "earlier results"


def test_the_default_data_is_found_from_any_folder(tmp_path, monkeypatch, root):
    monkeypatch.chdir(tmp_path)
    paths = splits._data_paths(list(splits.DEFAULT_FILES))
    assert paths == [str(root.resolve() / name) for name in splits.DEFAULT_FILES]
    assert splits._data_paths(["mine.pt"]) == ["mine.pt"]


def sparse_positions(n: int = 500, seed: int = 0) -> torch.Tensor:
    """Positions with uneven gaps (a scan of some sites only): cutting the range of values in
    equal parts and cutting the distinct positions in equal parts then differ."""
    sites = torch.tensor([3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 90, 150, 151, 152, 400, 401, 402, 403,
                          404, 405, 406, 800])
    g = torch.Generator().manual_seed(seed)
    return sites[torch.randint(len(sites), (n,), generator=g)]


def test_contiguous_folds_cut_the_distinct_positions_not_their_range():
    position = sparse_positions()
    fold = splits.assign_folds(position, "contiguous", 4, seed=0)
    distinct = sorted(set(position.tolist()))  # 22 sites: blocks of 5 or 6, in order
    per_fold = [sorted({int(p) for p, f in zip(position, fold) if f == k}) for k in range(4)]
    assert [p for block in per_fold for p in block] == distinct
    assert sorted(map(len, per_fold)) == [5, 5, 6, 6]


@pytest.mark.parametrize("scheme", splits.SCHEMES)
def test_every_fold_tests_on_its_own_rows_and_fits_and_selects_on_disjoint_others(scheme):
    """Worked from the fold rule itself: the test rows are exactly the fold's rows; fit and
    selection rows are the rest, disjoint from each other and from the test rows; under the
    position schemes no position is in two of the three."""
    position = sparse_positions(seed=1)
    settings = splits.SplitSettings(folds=4)
    fold_of = splits.assign_folds(position, scheme, 4, splits.stage_seed(0, f"splits/{scheme}"))
    seen_test = []
    for k, (fit, selection, test) in enumerate(splits.fold_rows(position, scheme, settings)):
        assert test.tolist() == [i for i in range(len(position)) if fold_of[i] == k]
        parts = [set(fit.tolist()), set(selection.tolist()), set(test.tolist())]
        assert sum(map(len, parts)) == len(position) == len(set().union(*parts))
        assert fit.numel() > 0 and selection.numel() > 0 and test.numel() > 0
        if scheme != "random":
            sites = [set(position[rows].tolist()) for rows in (fit, selection, test)]
            assert not (sites[0] & sites[1] or sites[0] & sites[2] or sites[1] & sites[2])
        seen_test += test.tolist()
    assert sorted(seen_test) == list(range(len(position)))  # each row tested once


def test_every_method_of_the_figure_has_its_own_colour_and_a_registered_one_keeps_its():
    from distil_rank.benchmark.compressors import COMPRESSORS, method_colours

    methods = [*splits.compressed_methods(), *splits.BASELINES]
    colours = method_colours(methods)
    assert len(set(colours.values())) == len(methods), colours
    assert colours["svd"] == COMPRESSORS["svd"].colour
