"""Latency code: structure and logic only. No test compares a time with a number: the machines
are shared and noisy; speed goals live in bench/."""

import torch
from torch import nn

from distil_rank.benchmark.latency import break_even_batch, latency_matrix, measure_latency
from distil_rank.lowrank import LowRankLinear


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


def test_a_wide_interquartile_range_is_flagged_noisy_and_said_so_in_the_table():
    from distil_rank.benchmark.report import latency_table
    from distil_rank.kernels.clock import NOISY_RELATIVE_IQR
    from distil_rank.kernels.clock import summarise as _summary

    steady, busy = _summary([1.0] * 9 + [1.01]), _summary([1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 3.0])
    assert not steady["noisy"] and busy["noisy"]
    assert busy["p75_ms"] - busy["p25_ms"] > NOISY_RELATIVE_IQR * busy["median_ms"]
    row = {"batch": 8, "dtype": "float32", "mode": "eager", "dense": busy, "factorised": steady,
           "speedup": 2.0, "flop_ratio": 10.0, "noisy": True}
    matrix = {"device": "CPU", "threads": 2, "dim_in": 8, "dim_out": 8, "rank": 2,
              "flop_ratio": 10.0, "rows": [row], "break_even_batch": {"float32/eager": 8}}
    for console in (False, True):
        text = "\n".join(latency_table(matrix, "test", console=console))
        assert "2.00x (noisy)" in text and "not a finding" in text


def test_cuda_records_show_the_memory_floor_the_passes_per_graph_and_the_fused_error():
    from distil_rank.benchmark.report import latency_table
    from distil_rank.kernels.clock import summarise as _summary

    def timing(ms):
        return _summary([ms] * 5) | {"calls_per_replay": 10}

    rows = [{"batch": batch, "dtype": "bfloat16", "mode": "fused_graph", "dense": timing(dense),
             "factorised": timing(low), "speedup": dense / low, "flop_ratio": 10.0,
             "noisy": False, "memory_bound_ms": floor,
             "fused": {"max_relative_error": error, "two_products_error": 0.006,
                       "auto_takes_kernel": batch > 1}}
            for batch, dense, low, floor, error in ((1, 0.004, 0.005, 1e-6, 0.001),
                                                     (65536, 0.29, 0.09, 0.06, 0.004))]
    matrix = {"device": "GPU", "threads": None, "dim_in": 1280, "dim_out": 1280, "rank": 64,
              "flop_ratio": 10.0, "rows": rows, "copy_bandwidth_gb_s": 4660.0,
              "graph_calls_per_replay": 10, "break_even_batch": {"bfloat16/fused_graph": 65536},
              "split_k_plans": True}
    for console in (False, True):
        text = "\n".join(latency_table(matrix, "test", console=console))
        assert "/ floor" in text and "1.5x" in text  # 0.09 ms over the 0.06 ms floor
        assert "(4660 GB/s)" in text and "capture 10 passes per graph" in text
        assert "bfloat16: largest error against fp32 two products 0.004" in text
        assert "(the two products' own: 0.006)" in text and "takes it at batch 65536" in text
        assert "opt-in split-K plans here" in text
        assert ("under graph replay, bfloat16: 0.80x dense at batch 1 (its lowest), 3.22x at "
                "batch 65536, where reading x and writing y once would allow 4.8x") in text
    cpu = latency_table(latency_matrix(16, 16, 2, torch.device("cpu"), batches=(4,), warmup=1,
                                       repeats=5), "cpu")
    assert not any("floor" in line or "Fused" in line for line in cpu)  # nothing to say there


def test_the_teacher_latency_table_says_rows_of_one_shape_differ_only_by_noise(root):
    import copy
    import json

    from distil_rank.benchmark.report import teacher_latency_table
    from distil_rank.benchmark.results import RunSummary

    summary = json.loads((root / "reference" / "distil_rank_summary.json").read_text())
    speedups = [summary[t]["latency"]["teacher"]["median_ms"]
                / summary[t]["latency"]["student"]["median_ms"] for t in summary["teachers"]]
    note = teacher_latency_table(RunSummary.from_json(summary).results())[-1]
    assert "same shape" in note and "is the machine's noise" in note
    assert f"{min(speedups):.2f}x to {max(speedups):.2f}x" in note
    wider = copy.deepcopy(summary)  # one teacher of another shape: no such claim
    wider[summary["teachers"][0]]["params_teacher"] += 1
    assert not any("same shape" in line
                   for line in teacher_latency_table(RunSummary.from_json(wider).results()))


def test_times_that_snap_to_the_scheduler_tick_are_flagged_and_random_ones_are_not():
    from distil_rank.benchmark.latency import quantised

    g = torch.Generator().manual_seed(0)
    ticks = [8.0 * (1 + int(k)) + 0.05 * float(e) for k, e in
             zip(torch.randint(0, 3, (40,), generator=g), torch.randn(40, generator=g))]
    assert quantised(ticks)  # multiples of 8 ms, a tight spread: waiting for the scheduler
    spread = (2.0 + 20 * torch.rand(200, generator=g)).tolist()
    assert not quantised(spread)  # times that fall anywhere
    assert not quantised([0.41, 0.40, 0.42, 0.40])  # fast calls: below two ticks of any clock


def test_an_implausible_speedup_is_untrusted_and_kept_out_of_the_break_even_batch():
    from distil_rank.benchmark.latency import trust_flags

    quiet = {"noisy": False, "quantised": False}
    assert trust_flags(quiet, quiet, 9.0, 10.0) == []
    assert trust_flags(quiet, quiet, 22.0, 10.0) == ["above the FLOP ratio"]
    assert trust_flags(quiet, {"noisy": False, "quantised": True}, 2.0, 10.0) == ["quantised"]
    rows = [{"batch": 1, "speedup": 0.5, "untrusted": []},
            {"batch": 32, "speedup": 221.7, "untrusted": ["above the FLOP ratio"]},
            {"batch": 256, "speedup": 0.9, "untrusted": []},
            {"batch": 4096, "speedup": 3.0, "untrusted": []}]
    assert break_even_batch(rows) == 4096  # the 221x cell at batch 32 decides nothing


def test_dense_and_factorised_are_timed_interleaved(monkeypatch):
    from distil_rank.benchmark import latency

    order = []
    dense, factorised = nn.Linear(8, 8), LowRankLinear(8, 8, 2)
    dense.register_forward_hook(lambda *a: order.append("A"))
    factorised.register_forward_hook(lambda *a: order.append("B"))
    latency.measure_latencies([dense, factorised], 4, 8, torch.device("cpu"), warmup=0,
                              repeats=5)
    assert "".join(order) == "AB" * 5  # each round times one call of each, in turn


def test_each_flag_is_raised_on_its_own_side_of_its_threshold():
    from distil_rank.benchmark.latency import PLAUSIBLE_OVER_FLOPS, trust_flags

    quiet, noisy = {"noisy": False, "quantised": False}, {"noisy": True, "quantised": False}
    assert trust_flags(noisy, quiet, 2.0, 10.0) == ["noisy"]  # either timing noisy
    assert trust_flags(quiet, noisy, 2.0, 10.0) == ["noisy"]
    assert trust_flags(noisy, noisy, 2.0, 10.0) == ["noisy"]
    ceiling = PLAUSIBLE_OVER_FLOPS * 10.0
    assert PLAUSIBLE_OVER_FLOPS == 1.5
    assert trust_flags(quiet, quiet, ceiling, 10.0) == []
    assert trust_flags(quiet, quiet, ceiling * 1.001, 10.0) == ["above the FLOP ratio"]
    assert trust_flags(quiet, quiet, 12.0, 10.0) == []  # above the ratio, within the margin


def test_the_interquartile_rule_flags_noise_on_both_sides_of_a_quarter():
    from distil_rank.kernels.clock import summarise

    # [1 - a] * 3 + [1] + [1 + a] * 3: quartiles 1 - a and 1 + a, median 1, so the range 2a
    # is a quarter of the median at a = 0.125
    def times(a):
        return [1 - a] * 3 + [1.0] + [1 + a] * 3

    assert not summarise(times(0.12))["noisy"] and summarise(times(0.13))["noisy"]


def test_warm_up_calls_are_made_and_not_timed(monkeypatch):
    from distil_rank.benchmark import latency
    from distil_rank.kernels import clock

    order = []
    dense, factorised = nn.Linear(8, 8), LowRankLinear(8, 8, 2)
    dense.register_forward_hook(lambda *a: order.append("A"))
    factorised.register_forward_hook(lambda *a: order.append("B"))
    timed = latency.measure_latencies([dense, factorised], 4, 8, torch.device("cpu"),
                                      warmup=3, repeats=5)
    assert "".join(order) == "AB" * 8 and [t["repeats"] for t in timed] == [5, 5]
    calls = []
    summaries = clock.in_turns([lambda: calls.append("a"), lambda: calls.append("b")],
                               torch.device("cpu"), repeats=4, warmup=2)
    assert "".join(calls) == "ab" * 6 and [s["repeats"] for s in summaries] == [4, 4]


def test_speed_is_said_as_slower_below_one_and_break_even_names_what_it_left_out():
    from distil_rank.benchmark.report import break_even_words, speed_words

    assert speed_words(2.04) == "2.04x faster"
    assert speed_words(0.78) == "1.28x slower (speedup 0.78x)"

    def row(batch, speedup, flags=()):
        return {"batch": batch, "dtype": "float32", "mode": "eager", "speedup": speedup,
                "untrusted": list(flags)}

    matrix = {"rows": [row(1, 1.4, ["noisy"]), row(32, 2.0), row(256, 3.0)]}
    words = break_even_words(matrix, "float32/eager", break_even_batch(matrix["rows"]))
    assert words == ("32 (faster at every trusted batch measured); batch 1 left out as "
                     "untrusted")
    matrix = {"rows": [row(1, 0.9), row(32, 2.0), row(256, 3.0)]}
    assert break_even_words(matrix, "float32/eager", 32) == "32"
    assert break_even_words(matrix, "float32/eager", None) == "not reached in the grid"
    matrix = {"rows": [row(1, 1.1), row(32, 2.0)]}
    assert break_even_words(matrix, "float32/eager", 1) == "1 (faster at every batch measured)"
