from dataclasses import replace

import pytest
import torch
from torch import nn

from conftest import correlated_inputs
from distil_rank.benchmark.compressors import (
    BenchmarkData,
    FitContext,
    compress_teacher,
    sweep_ranks,
    sweep_teacher,
    teacher_entry,
)
from distil_rank.benchmark.latency import LatencySettings
from distil_rank.benchmark.results import summarise_seeds
from distil_rank.distill import DistillSettings

CPU = torch.device("cpu")
SETTINGS = DistillSettings(steps=20, lr=3e-3, batch_size=32, alpha=0.1, weight_decay=0.01,
                           eval_every=10)


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
    data = BenchmarkData(train=x[:500], fit=x[:420], selection=x[420:500], val=x[500:])
    ranks = [2, 5, 10, 20]
    sweep = sweep_teacher(teacher, ranks, FitContext(data, SETTINGS, CPU, seed=0))
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


def test_entries_over_seeds_keep_per_seed_facts_and_a_speedup_that_matches_the_times():
    dim, rank = 24, 4
    x = correlated_inputs(300, dim, seed=2).float()
    fitness = x[:, 0] + 0.1 * x[:, 1]
    data = BenchmarkData(train=x[:200], fit=x[:170], selection=x[170:200], val=x[200:],
                         train_fitness=fitness[:200], val_fitness=fitness[200:])
    entries = []
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        teacher = nn.Linear(dim, dim).requires_grad_(False)
        with torch.no_grad():
            teacher.weight.copy_(torch.randn(dim, dim, generator=g) / dim**0.5)
        students = compress_teacher(teacher, rank, FitContext(data, SETTINGS, CPU, seed=seed))
        entries.append(teacher_entry(teacher, students, data, rank, LatencySettings(8, 1, 5),
                                     CPU, ridge_alpha=1e-2))
    assert not any(p.requires_grad for p in teacher.parameters())  # the caller's, untouched
    summary = summarise_seeds(entries)
    entries = [e.to_json() for e in entries]
    per_seed = [e["methods"]["data_aware"]["explained_variance"] for e in entries]
    assert summary["methods"]["data_aware"]["explained_variance"] == pytest.approx(
        sum(per_seed) / 3)
    # timings: the median over seeds, and the speedup is their ratio
    times = sorted(e["latency_teacher_ms"] for e in entries)
    assert summary["latency_teacher_ms"] == times[1]
    assert summary["speedup"] == summary["latency_teacher_ms"] / summary["latency_student_ms"]
    # every derived figure comes from the combined scores, not from averaging per-seed ratios
    svd, da = summary["methods"]["svd"], summary["methods"]["distil_da"]
    assert summary["mse_reduction"] == (svd["rel_mse"] - da["rel_mse"]) / svd["rel_mse"]
    assert summary["cosine_improvement"] == da["cosine"] - svd["cosine"]
    # each seed's distillations say how many steps they ran
    assert summary["distillation"]["distil"]["steps_run"] == [SETTINGS.steps] * 3
    # which checkpoint each seed kept: a per-seed list, never one seed's value
    chosen = summary["distillation"]["distil_da"]["chosen_step"]
    assert chosen == [e["distillation"]["distil_da"]["chosen_step"] for e in entries]
    assert summary["distillation"]["distil"]["chosen_step"] == [None] * 3
    assert "chosen_step" not in summary["methods"]["distil_da"]
    assert summary["std"]["methods"]["svd"]["explained_variance"] > 0
    assert summary["per_seed"] == entries


def test_fits_share_each_decomposition_once_and_are_charged_its_time(monkeypatch):
    """The SVD of a teacher's weight, the moments of a split and a teacher's output spectrum on
    it are computed once per seed (FitMemo); a fit that reuses one is charged what it cost, and
    the students are the same as when every fit computes its own."""
    from distil_rank import lowrank
    from distil_rank.benchmark import compressors as benchmark
    from distil_rank.benchmark.compressors import FitMemo, fit_data_aware, fit_distil, fit_svd

    calls = {"svd": 0, "moments": 0, "spectrum": 0}

    def slow(name, fn):
        def counted(*args):
            calls[name] += 1
            value = fn(*args)
            torch.ones(300, 300).matmul(torch.ones(300, 300))  # a cost worth charging
            return value
        return counted

    monkeypatch.setattr(benchmark, "full_svd", slow("svd", lowrank.full_svd))
    monkeypatch.setattr(benchmark, "input_moments", slow("moments", benchmark.input_moments))
    monkeypatch.setattr(benchmark, "output_spectrum", slow("spectrum", lowrank.output_spectrum))
    dim = 24
    teachers = [nn.Linear(dim, dim).double().requires_grad_(False) for _ in range(2)]
    x = correlated_inputs(300, dim, seed=2)
    data = BenchmarkData(train=x[:200], fit=x[:170], selection=x[170:200], val=x[200:])
    memo = FitMemo()
    context = FitContext(data, SETTINGS, CPU, seed=0, memo=memo)
    svd_first, svd_again = fit_svd(teachers[0], 4, context), fit_svd(teachers[0], 8, context)
    warm = fit_distil(teachers[0], 8, context)
    aware = [fit_data_aware(t, 6, context) for t in teachers + teachers[:1]]
    assert calls == {"svd": 1, "moments": 1, "spectrum": 2}  # one weight, one split, 2 teachers
    computed = memo._values[("svd", id(teachers[0].weight))][1]
    assert svd_again.fit_seconds >= computed and warm.fit_seconds >= computed
    assert aware[1].fit_seconds >= memo._values[("moments", id(data.train))][1]
    alone = [lowrank.compress_svd(teachers[0], 4), lowrank.compress_svd(teachers[0], 8),
             lowrank.compress_data_aware(teachers[1], data.train, 6)]
    for shared, own in zip((svd_first.module, warm.job.student, aware[1].module), alone):
        for a, b in zip(shared.parameters(), own.parameters()):
            assert torch.equal(a, b)


def test_task_aware_shares_its_weighting_across_ranks_only_where_it_is_exact(monkeypatch):
    """G of a readout with one output per row is exact, the same at every rank: task_aware
    computes it (with its roots and weighted spectrum) once per split. A readout with several
    outputs estimates G with probes seeded per rank, so each rank keeps its own. Either way
    every student equals the one fitted from its own G by the library."""
    from distil_rank import moments as moments_module
    from distil_rank.benchmark import compressors as benchmark
    from distil_rank.benchmark.compressors import FitMemo, fit_task_aware
    from distil_rank.lowrank import compress_data_aware
    from distil_rank.runtime import stage_seed

    calls = []
    monkeypatch.setattr(benchmark, "output_weight", lambda *args, **kwargs: calls.append(
        kwargs["seed"]) or moments_module.output_weight(*args, **kwargs))
    dim = 16
    teacher = nn.Linear(dim, dim).double().requires_grad_(False)
    x = correlated_inputs(200, dim, seed=3)
    data = BenchmarkData(train=x[:150], fit=x[:120], selection=x[120:150], val=x[150:])
    for outputs, computed in ((1, 1), (3, 2)):
        readout = nn.Sequential(nn.GELU(), nn.Linear(dim, outputs)).double()
        base = FitContext(data, SETTINGS, CPU, seed=0, memo=FitMemo(), readout=readout)
        calls.clear()
        for rank in (3, 6):
            context = replace(base, seed=stage_seed(base.seed, f"rank/{rank}"))
            student = fit_task_aware(teacher, rank, context).module
            weight = moments_module.output_weight(readout, teacher(data.train), probes=4,
                                                  seed=stage_seed(context.seed, "probes"))
            own = compress_data_aware(teacher, data.train, rank, weight, base.damping)
            for a, b in zip(student.parameters(), own.parameters()):
                torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
        assert len(calls) == computed, outputs


def test_only_the_groups_of_reported_students_are_timed_alone(monkeypatch):
    """train_students(time_alone=...) trains every student together, then once more on its own
    the first reported student of each group that holds one: a group of none (a sweep rank,
    whose record keeps no timing) is not trained twice."""
    from distil_rank.benchmark import compressors as benchmark
    from distil_rank.benchmark.compressors import fit_distil_da, train_students

    calls = []
    together = benchmark.distill_together
    monkeypatch.setattr(benchmark, "distill_together",
                        lambda jobs, *a, **k: calls.append(len(jobs)) or together(jobs, *a, **k))
    dim = 12
    teachers = [nn.Linear(dim, dim).requires_grad_(False) for _ in range(2)]
    x = correlated_inputs(300, dim, seed=3).float()
    data = BenchmarkData(train=x[:200], fit=x[:170], selection=x[170:200], val=x[200:])
    context = FitContext(data, SETTINGS, CPU, seed=0)
    target = [fit_distil_da(t, 4, context) for t in teachers]  # one group of two
    swept = [fit_distil_da(t, 2, context) for t in teachers]  # another rank: another group
    train_students(target + swept, CPU, time_alone=target)
    assert calls == [4, 1]  # all four together, then one of the target rank's group alone
    assert all(s.details["distill_alone_seconds"] > 0 for s in target)
    assert not any("distill_alone_seconds" in s.details for s in swept)
    assert all(s.job is None and s.run is not None for s in target + swept)
