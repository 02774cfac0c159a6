"""Latency code: structure and logic only. No test compares a time with a number: the machines
are shared and noisy; speed goals live in bench/."""

import torch
from torch import nn

from distil_rank.lowrank import LowRankLinear
from distil_rank.timing import break_even_batch, latency_matrix, measure_latency


def test_measure_latency_reports_median_and_quartiles():
    result = measure_latency(nn.Linear(16, 16), 8, 16, torch.device("cpu"), warmup=2, repeats=9)
    assert result["p25_ms"] <= result["median_ms"] <= result["p75_ms"]
    assert result["repeats"] == 9 and result["threads"] == torch.get_num_threads()
    assert result["device"].startswith("CPU")


def test_budget_caps_the_number_of_calls():
    result = measure_latency(LowRankLinear(64, 64, 4), 4, 64, torch.device("cpu"), warmup=1,
                             repeats=10_000, budget_s=1e-9)
    assert result["repeats"] == 5


def test_break_even_is_where_the_factorised_layer_stays_faster():
    rows = [{"batch": 1, "speedup": 0.4}, {"batch": 32, "speedup": 1.2},
            {"batch": 256, "speedup": 0.9}, {"batch": 4096, "speedup": 3.0},
            {"batch": 65536, "speedup": 6.0}]
    assert break_even_batch(rows) == 4096
    assert break_even_batch([{"batch": 1, "speedup": 2.0}, {"batch": 8, "speedup": 3.0}]) == 1
    assert break_even_batch([{"batch": 1, "speedup": 0.5}]) is None


def test_latency_matrix_rows_and_flop_ratio():
    matrix = latency_matrix(32, 32, 4, torch.device("cpu"), batches=(1, 8), warmup=1, repeats=5)
    assert [r["batch"] for r in matrix["rows"]] == [1, 8]
    assert matrix["flop_ratio"] == 32 * 32 / (4 * 64)
    for row in matrix["rows"]:
        assert row["speedup"] == row["dense"]["median_ms"] / row["factorised"]["median_ms"]
    assert set(matrix["break_even_batch"]) == {"float32/eager"}
