"""The fused low-rank kernel against the two-product path: its blocking logic in plain PyTorch
everywhere, and the Triton kernel itself under Triton's CPU interpreter where Triton installs.
No timing here: speed is measured on a GPU by bench/latency.py."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from distil_rank.kernels.fused import (
    MAX_RANK,
    candidates,
    fits,
    plan,
    refit,
    row_bucket,
)
from distil_rank.lowrank import LowRankLinear


def blocked_reference(x: torch.Tensor, down: torch.Tensor, up: torch.Tensor,
                      bias: torch.Tensor | None, p) -> torch.Tensor:
    """The kernel's loops in plain PyTorch, tile by tile with its padding, for a 2-D x and plan
    p: its blocking logic, tested where Triton is absent."""
    rows, dim_in = x.shape
    dim_out, rank = up.shape
    out = torch.empty(rows, dim_out, dtype=x.dtype)
    padded_down = F.pad(down, (0, 0, 0, p.block_r - rank)).float()  # [block_r, dim_in]
    padded_up = F.pad(up, (0, p.block_r - rank)).float()  # [dim_out, block_r]
    for pm in range(1 if p.k_split > 1 else p.grid[0]):
        m = slice(pm * p.block_m, min(rows, (pm + 1) * p.block_m))
        for pn in range(p.grid[1]):
            h = torch.zeros(m.stop - m.start, p.block_r)
            for c0 in range(0, dim_in, p.k_chunk):  # one program's chunk each, summed in order
                part = torch.zeros_like(h)
                for k0 in range(c0, min(dim_in, c0 + p.k_chunk), p.block_k):
                    k = slice(k0, min(dim_in, k0 + p.block_k))
                    part += x[m, k].float() @ padded_down[:, k].T
                h += part
            h = h.to(x.dtype).float()  # rounded as the two-product path rounds it
            for n0 in range(pn * p.n_span, min(dim_out, (pn + 1) * p.n_span), p.block_n):
                n = slice(n0, min(dim_out, n0 + p.block_n))
                y = h @ padded_up[n].T + (0 if bias is None else bias[n].float())
                out[m, n] = y.to(x.dtype)
    return out



# rows, width in, width out, rank: none a multiple of the block sizes, a batch of one included
SHAPES = [(1, 40, 50, 5), (17, 70, 33, 16), (70, 130, 200, 33), (100, 64, 129, 1)]
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 6e-2}  # relative to max


def factors(rows, dim_in, dim_out, rank, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, dim_in, generator=g)
    down = torch.randn(rank, dim_in, generator=g) / dim_in**0.5
    up = torch.randn(dim_out, rank, generator=g) / rank**0.5
    bias = torch.randn(dim_out, generator=g)
    return [t.to(dtype) for t in (x, down, up, bias)]


def two_products(x, down, up, bias):
    return F.linear(F.linear(x, down), up, bias)


@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize("with_bias", [True, False])
def test_fused_blocking_logic_reproduces_the_two_products(dtype, with_bias, monkeypatch):
    monkeypatch.setenv("DISTIL_RANK_SPLIT_K", "1")  # split-K plans among the candidates too
    for shape in SHAPES:
        x, down, up, bias = factors(*shape, dtype)
        bias = bias if with_bias else None
        want = two_products(x.float(), down.float(), up.float(),
                            None if bias is None else bias.float())
        for processors in (1, 132):  # one output span per row block, or split to fill a chip
            for p in candidates(*shape, processors, x.element_size()):  # every plan tuning tries
                got = blocked_reference(x, down, up, bias, p)
                error = (got.float() - want).abs().max() / want.abs().max()
                assert error < TOLERANCE[dtype], (shape, dtype, p, error.item())


def test_fused_plans_cover_every_row_and_column_fit_the_chip_and_refuse_large_ranks():
    for rows, dim_in, dim_out, rank in SHAPES + [(65536, 1280, 1280, 64), (1, 1280, 1280, 64),
                                                 (65536, 1280, 1280, 256), (8, 1280, 640, 200)]:
        for element_bytes in (4, 2):
            tried = candidates(rows, dim_in, dim_out, rank, element_bytes=element_bytes)
            assert tried[0] == plan(rows, dim_in, dim_out, rank, 132, element_bytes)  # first
            assert len(set(tried)) == len(tried)
            for p in tried:
                assert fits(p, element_bytes), p
                assert p.block_r >= max(rank, 16) and p.block_r & (p.block_r - 1) == 0
                assert p.grid[0] * p.block_m >= rows > (p.grid[0] - 1) * p.block_m
                assert p.grid[1] * p.n_span >= dim_out > (p.grid[1] - 1) * p.n_span
                assert p.n_span % p.block_n == 0 and min(p.block_k, p.block_m) >= 16
    assert len(candidates(65536, 1280, 1280, 64)) >= 4  # something to choose between
    for tuned_at, used_at in ((4096, 3000), (32, 17), (1, 1)):  # one bucket each
        assert row_bucket(tuned_at) == row_bucket(used_at)
        for p in candidates(tuned_at, 1280, 1280, 64):
            q = refit(p, used_at, 1280, 1280, 64)
            assert (q.block_m, q.block_k, q.block_n, q.num_warps, q.num_stages) == (
                p.block_m, p.block_k, p.block_n, p.num_warps, p.num_stages)
            assert q.grid[0] * q.block_m >= used_at > (q.grid[0] - 1) * q.block_m
            assert q.grid[1] * q.n_span >= 1280 > (q.grid[1] - 1) * q.n_span
    assert [row_bucket(n) for n in (1, 2, 3, 4096, 4097)] == [1, 2, 4, 4096, 8192]
    assert plan(1, 1280, 1280, 64).grid[1] > 1  # a batch of one still spreads over the chip
    assert plan(65536, 1280, 1280, 64).grid[1] == 1  # enough row blocks: no recomputation
    assert plan(8, 1280, 1280, MAX_RANK + 1) is None and not candidates(8, 1280, 1280, 300)


def test_fused_split_k_plans_cover_the_input_in_chunks_and_are_opt_in(monkeypatch):
    assert not any(p.k_split > 1 for p in candidates(1, 1280, 1280, 64))  # off by default
    monkeypatch.setenv("DISTIL_RANK_SPLIT_K", "1")
    for rows, dim_in, dim_out, rank in SHAPES + [(1, 1280, 1280, 64), (32, 1280, 1280, 64),
                                                 (3, 1280, 640, 200)]:
        for element_bytes in (4, 2):
            split = [p for p in candidates(rows, dim_in, dim_out, rank, 132, element_bytes)
                     if p.k_split > 1]
            one_block = rows <= 32  # a split plan needs one row block, and input to split
            assert len(split) == one_block if dim_in >= 1280 else len(split) <= one_block
            for p in split:
                assert p.grid[0] == p.k_split and p.block_m >= rows and p.k_chunk % p.block_k == 0
                assert p.k_split * p.k_chunk >= dim_in > (p.k_split - 1) * p.k_chunk
                assert p.grid[0] * p.grid[1] <= 132  # one wave: every span's programs at once
                again = refit(p, max(1, rows - 1), dim_in, dim_out, rank)
                assert again.k_split == p.k_split  # fewer rows in the bucket: still split
    p = candidates(1, 1280, 1280, 64, 132, 2)[-1]
    assert p.k_split > 1 and refit(p, 300, 1280, 1280, 64).k_split == 1  # rows past one block


def test_fused_tuning_keeps_the_fastest_right_plan_skipping_wrong_ones_and_those_too_big(
        monkeypatch):
    errors = pytest.importorskip("triton.runtime.errors", reason="Triton is not installed here")
    from distil_rank.kernels import fused

    x, down, up, bias = factors(4096, 1280, 1280, 64, torch.float32)
    x[0, 0] = math.nan  # the caller's values play no part: the tuning draws its own input
    plans = candidates(4096, 1280, 1280, 64, 132, 4)
    slow_first = {p: 10.0 - i for i, p in enumerate(plans)}  # the last plan is the fastest...
    too_big, wrong = plans[-1], plans[-2]  # ...but does not fit this chip; the next is wrong

    def fake_kernel(x, down, up, bias, p):  # a stand-in for the kernel: what each plan gives
        if p == too_big:
            raise errors.OutOfResources(300_000, 232_448, "shared memory")
        right = two_products(x, down, up, bias)
        return right * 1.001 if p == wrong else right

    def fake_median_ms(fn, *args):
        return 7.5 if fn is fused.two_products_path else slow_first[args[-1]]

    monkeypatch.setattr(fused, "fused_lowrank", fake_kernel)
    monkeypatch.setattr(fused, "_median_ms", fake_median_ms)
    with pytest.warns(RuntimeWarning, match="is not used"):
        tuned = fused.measure_plans(x, down, up, bias, 132)
    assert tuned.plan == plans[-3] and tuned.fused_ms == slow_first[plans[-3]]
    assert (tuned.tried, tuned.rejected) == (len(plans) - 2, 1) and tuned.two_products_ms == 7.5
    monkeypatch.setattr(fused, "candidates", lambda *shape: [too_big])
    nothing_fits = fused.measure_plans(x, down, up, bias, 132)
    assert nothing_fits.tried == 0 and nothing_fits.fused_ms == float("inf")


def test_fused_kernel_forced_on_refuses_a_shape_where_no_plan_was_right(monkeypatch):
    from distil_rank.kernels import fused

    x, down, up, bias = factors(8, 40, 50, 5, torch.float32)
    nothing_right = fused.Tuning(plan(8, 40, 50, 5), math.inf, 1.0, tried=0, rejected=3)
    monkeypatch.setattr(fused, "tuning", lambda *args: nothing_right)
    with pytest.raises(RuntimeError, match=r"no plan .* \(3 disagreed\): use fused = \"auto\""):
        fused.fused_lowrank(x, down, up, bias)


def test_fused_tuning_never_runs_the_gpu_out_of_memory(monkeypatch):
    pytest.importorskip("triton.runtime.errors", reason="Triton is not installed here")
    from distil_rank.kernels import fused

    x, down, up, bias = factors(64, 40, 50, 5, torch.float32)
    plans = candidates(64, 40, 50, 5, 132, 4)
    short = torch.cuda.OutOfMemoryError("CUDA out of memory")

    def fake_kernel(x, down, up, bias, p):
        if p == plans[0]:
            raise short  # its check did not fit
        return two_products(x, down, up, bias)

    def fake_median_ms(fn, *args):
        if fn is fused.two_products_path:
            raise short  # nor did the two products' timing graph
        return float(plans.index(args[-1]))

    monkeypatch.setattr(fused, "fused_lowrank", fake_kernel)
    monkeypatch.setattr(fused, "_median_ms", fake_median_ms)
    tuned = fused.measure_plans(x, down, up, bias, 132)
    assert tuned.plan == plans[1] and tuned.tried == len(plans) - 1
    assert tuned.two_products_ms == math.inf  # not timed: auto takes the plan that ran

    def no_room(*args):
        raise short

    monkeypatch.setattr(fused, "two_products_path", no_room)  # not even the probe's reference
    with pytest.warns(RuntimeWarning, match="no memory to tune"):
        starved = fused.measure_plans(x, down, up, bias, 132)
    assert starved.tried == 0 and starved.fused_ms == starved.two_products_ms == math.inf
    assert [fused.calls_per_graph(n) for n in (1, 2**20, 2**27, 2**28, 335 * 2**20)] == \
        [10, 10, 2, 1, 1]  # 10 outputs a graph, below 256 MB of them
    # with the GPU's free memory: the graph and a warm-up call in at most half of it
    assert [fused.calls_per_graph(2**20, free * 2**20) for free in (100, 22, 21, 4, 3)] == \
        [10, 10, 9, 1, 0]  # 0: not even one call, and the timing is not captured


def test_fused_relative_error_is_the_largest_difference_over_the_largest_output():
    from distil_rank.kernels.fused import relative_error, within_rounding

    want = torch.tensor([[4.0, -8.0], [2.0, 0.0]])
    assert relative_error(want + torch.tensor([[0.0, 0.5], [-1.0, 0.0]]), want) == 1.0 / 8.0
    assert relative_error(torch.zeros(2, 2), torch.zeros(2, 2)) == 0.0  # no 0 / 0
    assert within_rounding(2e-3, 1e-3) and not within_rounding(2.1e-3, 1e-3)


INTERPRETED = r"""
import importlib.util, json, os, sys
os.environ["TRITON_INTERPRET"] = "1"
import torch
spec = importlib.util.spec_from_file_location("test_fused", sys.argv[2] + "/test_fused.py")
test_fused = importlib.util.module_from_spec(spec)
spec.loader.exec_module(test_fused)
SHAPES, TOLERANCE, factors = test_fused.SHAPES, test_fused.TOLERANCE, test_fused.factors
two_products = test_fused.two_products
from distil_rank.kernels.fused import candidates, fused_lowrank, within_rounding
split_launches = 0
from distil_rank.lowrank import LowRankLinear
errors, launches = [], 0
for dtype in TOLERANCE:
    for shape in SHAPES:
        for with_bias in (True, False) if dtype == torch.float32 else (True,):
            x, down, up, bias = factors(*shape, dtype)
            bias = bias if with_bias else None
            want = two_products(x.float(), down.float(), up.float(),
                                None if bias is None else bias.float())
            def error(got):
                return ((got.float() - want).abs().max() / want.abs().max()).item()

            reference = error(two_products(x, down, up, bias))  # rounding in this dtype
            worst = 0.0
            for p in [None] + candidates(*shape, 4, x.element_size()):  # None: the default
                split = p is not None and p.k_split > 1
                for _ in range(2 if split else 1):  # split-K's counters are reset after a call
                    worst = max(worst, error(fused_lowrank(x, down, up, bias, p)))
                launches += 1
                split_launches += split
            errors.append([str(dtype), shape, with_bias, worst, reference,
                           within_rounding(worst, reference)])
layer = LowRankLinear(24, 20, 4)
x3 = torch.randn(2, 5, 24)
reference = two_products(x3, layer.down, layer.up, layer.bias).detach()
layer.fused = "on"
with torch.no_grad():
    leading = (layer(x3) - reference).abs().max().item()
with torch.no_grad():  # torch.compile takes the two products: tracing the kernel fails
    compiled = (torch.compile(layer, backend="eager")(x3) - reference).abs().max().item()
empty = fused_lowrank(torch.randn(0, 3, 24), layer.down.detach(), layer.up.detach(), None)
assert empty.shape == (0, 3, 20)  # no rows: nothing to launch
trained = layer(x3.requires_grad_())  # a gradient is wanted: autograd's path
from distil_rank.benchmark.latency import fused_check
check = fused_check(LowRankLinear(70, 50, 9), 33, torch.device("cpu"), torch.bfloat16)
from distil_rank.kernels import fused  # the tuning's own check of each plan, the clock a stand-in
fused._median_ms = lambda fn, *args: 1.0
tuned = fused.measure_plans(*factors(33, 70, 50, 9, torch.bfloat16), 4)
captured = None  # a split plan launched as if capturing a graph on a stream with no counters
split_plans = [p for p in candidates(1, 300, 40, 7, 132, 4) if p.k_split > 1]
if split_plans:
    fused._COUNTS.clear()
    fused._capturing = lambda device: True
    xs, ds, us, bs = factors(1, 300, 40, 7, torch.float32)
    want = two_products(xs, ds, us, bs)
    got = fused_lowrank(xs, ds, us, bs, split_plans[0])
    captured = [((got - want).abs().max() / want.abs().max()).item(), len(fused._COUNTS)]
print(json.dumps({"errors": errors, "launches": launches, "leading_shape_error": leading,
                  "compiled_error": compiled, "split_launches": split_launches,
                  "check": check, "tuned": [tuned.tried, tuned.rejected], "captured": captured,
                  "grad_fn": trained.grad_fn is not None}))
"""


def test_fused_kernel_under_the_triton_interpreter_matches_the_two_products(root, tmp_path):
    """Every plan, in each dtype, within twice the two products' own rounding error (the bar
    bench/latency.py sets on the GPU); bf16 rounds to nearest even, as on a GPU. A bias in each
    dtype; no bias in fp32 only (the branch does not depend on the dtype, and the interpreter
    takes about a second per shape and dtype). With split-K
    plans too: the interpreter runs programs one after another, so this checks their sums and
    their counters, not the memory ordering a GPU must keep (see fused.split_k_enabled). The
    opt-in is on here, so that both kinds of plan run in one interpreted process (without it
    the candidates are the unsplit ones, test_fused_plan_candidates_... above)."""
    split_k = "1"
    pytest.importorskip("triton", reason="Triton is not installed here: the kernel itself is "
                        "not run; its blocking logic is tested in plain PyTorch above")
    script = tmp_path / "interpreted.py"
    script.write_text(INTERPRETED)
    env = dict(os.environ, DISTIL_RANK_SPLIT_K=split_k)
    done = subprocess.run([sys.executable, str(script), str(root), str(root / "tests")],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    failed = [e for e in result["errors"] if not e[-1]]
    assert not failed, failed
    assert len(result["errors"]) == (len(TOLERANCE) + 1) * len(SHAPES)  # no bias: fp32 only
    assert result["launches"] > 2 * len(result["errors"])  # the tuning's other plans ran too
    assert result["leading_shape_error"] < 1e-5 and result["grad_fn"]
    assert result["compiled_error"] < 1e-5
    check = result["check"]  # the latency matrix's record of the kernel, here in bf16
    assert check["max_relative_error"] < TOLERANCE[torch.bfloat16]
    assert 0 < check["two_products_error"] < TOLERANCE[torch.bfloat16]  # bf16 does round
    assert check["within_rounding"]  # what bench/latency.py demands of every fused row
    assert check["plans_tried"] == 0 and not check["auto_takes_kernel"]  # no CUDA clock here
    assert check["plan"]["block_m"] == 32 and check["plan"]["grid"] == [2, 1]  # 33 rows, 50 out
    assert result["tuned"][1] == 0 and result["tuned"][0] > 4  # every plan agreed
    assert (result["split_launches"] > 0) == (split_k == "1")
    if split_k == "1":  # zeroing new counters would only be recorded: the unsplit plan instead
        error, counter_sets = result["captured"]
        assert error < TOLERANCE[torch.float32] and counter_sets == 0
    else:
        assert result["captured"] is None


def test_fused_mode_is_checked_and_the_cpu_keeps_the_two_products():
    from distil_rank.kernels.fused import use_fused

    layer = LowRankLinear(8, 8, 2)
    x = torch.randn(3, 8)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), two_products(x, layer.down, layer.up, layer.bias))
        with pytest.raises(ValueError, match="expected one of auto, on, off"):
            use_fused("sometimes", x, layer.down, layer.up, layer.bias)
        assert not use_fused("auto", x, layer.down, layer.up, layer.bias)  # no CUDA here


def test_fused_kernel_is_only_asked_for_in_its_dtypes_on_one_device(monkeypatch):
    from distil_rank.kernels import fused

    monkeypatch.setattr(fused, "triton_available", lambda: True)  # as if on a GPU
    monkeypatch.setattr(fused, "_interpreting", lambda: True)
    with torch.no_grad():
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            assert fused.use_fused("on", *factors(3, 8, 8, 2, dtype))
        assert not fused.use_fused("on", *factors(3, 8, 8, 2, torch.float64))
        x, down, up, bias = factors(3, 8, 8, 2, torch.float32)
        assert not fused.use_fused("on", x.bfloat16(), down, up, bias)  # mixed: F.linear's error
        assert not fused.use_fused("on", x, down, up, bias.double())
        assert not fused.use_fused("on", x, down, up, bias.to("meta"))  # another device


def test_fused_launches_and_tuning_are_put_on_the_input_s_device():
    from distil_rank.kernels import fused

    on = fused._on(torch.device("cuda", 1))  # built, not entered: no GPU is needed for this
    assert isinstance(on, torch.cuda.device) and on.idx == 1  # Triton would use the current one
    with fused._on(torch.device("cpu")):  # nothing to switch
        pass


def test_fused_first_plans_compile_for_hopper_without_spilling():
    """Compiled ahead of time for sm_90 (no GPU needed): the first guess for fp32 and bf16, at
    a batch of one and of 65536 at rank 64 and at the widest rank fused, keeps everything in
    registers; bf16 products run on tensor
    cores and fp32 ones on FMA units (IEEE, as exact as cuBLAS), with the input staged by
    asynchronous copies. bench/fused_compile.py records every plan the tuning may try."""
    pytest.importorskip("triton", reason="Triton is not installed here: nothing to compile with")
    from conftest import load_script

    compile_report = load_script("bench/fused_compile.py").compile_report

    for dtype in (torch.float32, torch.bfloat16):
        for rows, rank in ((1, 64), (65536, 64), (256, 256), (65536, 256)):
            p = plan(rows, 1280, 1280, rank, 132, torch.finfo(dtype).bits // 8)
            report = compile_report(p, rows, 1280, 1280, rank, dtype)
            assert report["spill_stores"] == report["stack_bytes"] == 0, (dtype, rows, rank, report)
            assert report["registers"] <= 128, report  # two or more programs a multiprocessor
            assert report["async_copies"] > 0, report
            if dtype == torch.float32:
                assert report["fma"] > 0 and report["tensor_core_products"] == 0, report
            else:
                assert report["tensor_core_products"] > 0 and report["fma"] == 0, report
            assert report["atomics"] == report["gpu_fences"] == 0, report


def test_fused_split_k_plans_compile_for_hopper_with_release_and_acquire(monkeypatch):
    """A split-K plan at a batch of one: no spills, and the arrival protocol as the GPU will
    run it: one atomic add and one reset (exchange) a program, each behind a GPU-scope fence."""
    pytest.importorskip("triton", reason="Triton is not installed here: nothing to compile with")
    from conftest import load_script

    compile_report = load_script("bench/fused_compile.py").compile_report

    monkeypatch.setenv("DISTIL_RANK_SPLIT_K", "1")
    for dtype in (torch.float32, torch.bfloat16):
        p = candidates(1, 1280, 1280, 64, 132, torch.finfo(dtype).bits // 8)[-1]
        assert p.k_split > 1
        report = compile_report(p, 1, 1280, 1280, 64, dtype)
        assert report["spill_stores"] == report["stack_bytes"] == 0, (dtype, report)
        assert report["atomics"] == 2 and report["gpu_fences"] == 2, (dtype, report)
