import math
import statistics

import pytest
import torch

from distil_rank.benchmark.stats import MEDIAN, PER_SEED, aggregate, effective_rank, mean_and_std
from distil_rank.lowrank import smallest_rank_reaching


def test_mean_and_std_match_the_statistics_module():
    values = [0.81, 0.79, 0.84, 0.80]
    mean, std = mean_and_std(values)
    assert mean == pytest.approx(statistics.mean(values))
    assert std == pytest.approx(statistics.stdev(values))
    assert mean_and_std([3.0]) == (3.0, 0.0)


def test_aggregate_walks_dicts_and_lists():
    seeds = [
        {"ev": 0.8, "params": 100, "name": "a", "curve": [1.0, 2.0], "inner": {"x": 1.0}},
        {"ev": 0.9, "params": 100, "name": "a", "curve": [3.0, 6.0], "inner": {"x": 3.0}},
    ]
    mean, std = aggregate(seeds)
    assert mean["ev"] == pytest.approx(0.85)
    assert std["ev"] == pytest.approx(statistics.stdev([0.8, 0.9]))
    assert mean["params"] == 100 and isinstance(mean["params"], int) and std["params"] == 0
    assert mean["name"] == "a" and "name" not in std
    assert mean["curve"] == [2.0, 4.0]
    assert std["curve"] == pytest.approx([math.sqrt(2), math.sqrt(8)])
    assert mean["inner"]["x"] == 2.0


def test_effective_rank_of_known_spectra():
    flat = effective_rank(torch.ones(10))
    assert flat["participation_ratio"] == pytest.approx(10)
    assert flat["components_for_90pct"] == 9
    assert flat["components_for_99pct"] == 10
    one = effective_rank(torch.tensor([1.0, 0, 0, 0]))
    assert one["participation_ratio"] == pytest.approx(1)
    assert one["components_for_99pct"] == 1
    # 0.5, 0.3, 0.2: cumulative 0.5, 0.8, 1.0 -> 90% needs 3 components; PR = 1 / 0.38
    mixed = effective_rank(torch.tensor([0.2, 0.5, 0.3]))
    assert mixed["components_for_90pct"] == 3
    assert mixed["participation_ratio"] == pytest.approx(1 / 0.38)


def test_smallest_rank_reaching():
    explained = [0.0, 0.5, 0.95, 0.99, 0.9995, 1.0]
    assert smallest_rank_reaching(explained) == {"0.95": 2, "0.99": 3, "0.999": 4}
    assert smallest_rank_reaching([0.0, 0.2]) == {"0.95": None, "0.99": None, "0.999": None}


def test_aggregate_rules_for_timings_per_seed_lists_and_disagreements():
    seeds = [{"fit_seconds": 1.0, "latency_ms": 5.0, "steps": [(0, 1.0)], "kept": 0},
             {"fit_seconds": 9.0, "latency_ms": 1.0, "steps": [(0, 2.0)], "kept": 50},
             {"fit_seconds": 2.0, "latency_ms": 2.0, "steps": [(0, 3.0)], "kept": 0}]
    rules = {"fit_seconds": MEDIAN, "latency_ms": MEDIAN, "steps": PER_SEED, "kept": PER_SEED}
    mean, std = aggregate(seeds, rules)
    assert mean["fit_seconds"] == 2.0 and mean["latency_ms"] == 2.0  # medians
    assert std["fit_seconds"] == pytest.approx(statistics.stdev([1.0, 9.0, 2.0]))
    assert mean["steps"] == [[(0, 1.0)], [(0, 2.0)], [(0, 3.0)]] and "steps" not in std
    assert mean["kept"] == [0, 50, 0]
    undeclared, _ = aggregate(seeds, {"steps": PER_SEED, "kept": PER_SEED})
    assert undeclared["fit_seconds"] == 4.0  # the rule is declared, never read from a name
    with pytest.raises(ValueError, match="name: differs across seeds"):
        aggregate([{"name": "a"}, {"name": "b"}])
    with pytest.raises(ValueError, match="different keys"):
        aggregate([{"a": 1.0}, {"b": 1.0}])
