import pytest
import torch
from torch import nn

from conftest import correlated_inputs
from distil_rank.benchmark import DistillSettings, Inputs, sweep_ranks, sweep_teacher

CPU = torch.device("cpu")


def test_sweep_ranks_span_heavy_to_light_compression():
    assert sweep_ranks(320) == [4, 8, 16, 32, 64, 80]
    assert sweep_ranks(1280) == [16, 32, 64, 128, 256, 320]
    assert 1280 // 20 in sweep_ranks(1280)
    assert sweep_ranks(6) == [1]  # tiny D: duplicates collapse, rank stays below D


def test_closed_form_curve_agrees_with_the_measured_data_aware_points():
    torch.manual_seed(0)
    dim = 40
    teacher = nn.Linear(dim, dim).double().requires_grad_(False)
    x = correlated_inputs(600, dim, seed=1)
    inputs = Inputs(train=x[:500], fit=x[:420], selection=x[420:500], val=x[500:],
                    train_fitness=None, val_fitness=None)
    cfg = DistillSettings(steps=20, lr=3e-3, batch_size=32, alpha=0.1, weight_decay=0.01,
                          eval_every=10)
    ranks = [2, 5, 10, 20]
    sweep = sweep_teacher(teacher, inputs, ranks, cfg, CPU, seed=0)
    curve = sweep["closed_form_train_explained_variance"]
    assert len(curve) == dim + 1 and curve[0] == 0 and curve[-1] == pytest.approx(1)
    assert all(a <= b + 1e-12 for a, b in zip(curve, curve[1:]))  # more rank, never worse
    for rank, measured in zip(ranks, sweep["data_aware_train_explained_variance"]):
        assert measured == pytest.approx(curve[rank], abs=1e-10)
    assert sweep["closed_form_max_abs_gap"] < 1e-10
    for method in ("svd", "data_aware", "distil_da"):
        assert len(sweep["methods"][method]["explained_variance"]) == len(ranks)
    # on validation the closed form still beats the data-free SVD at every rank
    for da, svd in zip(sweep["methods"]["data_aware"]["explained_variance"],
                       sweep["methods"]["svd"]["explained_variance"]):
        assert da > svd
    targets = sweep["smallest_rank_for_train_explained_variance"]
    for target, rank in targets.items():
        assert curve[rank] >= float(target) and curve[rank - 1] < float(target)
