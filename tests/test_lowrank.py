"""The compressors against independent references: Eckart-Young on the output matrix (numpy),
the sum of discarded eigenvalues, brute-force least squares for the bias."""

import numpy as np
import pytest
import torch
from torch import nn

from conftest import correlated_inputs
from distil_rank.lowrank import (
    LowRankLinear,
    compress_data_aware,
    compress_svd,
    data_aware_error_curve,
    flop_ratio,
    lowrank_parameters,
    num_parameters,
)
from distil_rank.moments import input_moments


def make_linear(d_in, d_out, seed, bias=True):
    torch.manual_seed(seed)
    return nn.Linear(d_in, d_out, bias=bias).double()


def mean_sq_error(a, b):
    """Per-row squared error summed over outputs, averaged over rows."""
    return (a - b).pow(2).sum(1).mean().item()


@pytest.mark.parametrize("seed", range(5))
def test_data_aware_reaches_the_eckart_young_bound_of_the_centred_outputs(seed):
    d_in, d_out, n, rank = 24, 20, 300, 5
    x = correlated_inputs(n, d_in, seed)
    teacher = make_linear(d_in, d_out, seed)
    student = compress_data_aware(teacher, x, rank)
    with torch.no_grad():
        y, y_hat = teacher(x), student(x)
    # Independent reference: the best any rank-r map plus bias can do on these rows is the
    # Eckart-Young error of the centred output matrix, sum of its discarded squared singular
    # values (numpy's SVD, not the code's eigendecomposition).
    centred = (y - y.mean(0)).numpy()
    singular = np.linalg.svd(centred, compute_uv=False)
    optimum = (singular[rank:] ** 2).sum() / n
    assert mean_sq_error(y, y_hat) == pytest.approx(optimum, rel=1e-9, abs=1e-12)
    assert data_aware_error_curve(teacher.weight, input_moments(x))[rank].item() == pytest.approx(
        optimum, rel=1e-9, abs=1e-12)
    assert torch.linalg.matrix_rank(student.dense_weight()).item() == rank


@pytest.mark.parametrize("seed", range(5))
def test_data_aware_beats_svd_and_random_factors(seed):
    d_in, d_out, n, rank = 32, 32, 400, 4
    x = correlated_inputs(n, d_in, seed)
    teacher = make_linear(d_in, d_out, seed)
    with torch.no_grad():
        y = teacher(x)
        best = mean_sq_error(y, compress_data_aware(teacher, x, rank)(x))
        svd = mean_sq_error(y, compress_svd(teacher, rank)(x))
        assert best < svd
        g = torch.Generator().manual_seed(seed)
        for _ in range(20):
            up = torch.randn(d_out, rank, generator=g, dtype=torch.float64)
            down = torch.randn(rank, d_in, generator=g, dtype=torch.float64)
            # random factors, rescaled by least squares and given the optimal bias: still worse
            w = up @ down
            pred = x @ w.T
            centred = pred - pred.mean(0)
            scale = ((y - y.mean(0)) * centred).sum() / centred.pow(2).sum()
            pred = scale * pred
            pred = pred + (y - pred).mean(0)
            assert best < mean_sq_error(y, pred)


def test_data_aware_error_curve_matches_every_rank():
    x = correlated_inputs(200, 16, seed=3)
    teacher = make_linear(16, 12, seed=3)
    curve = data_aware_error_curve(teacher.weight, input_moments(x))
    assert curve.shape == (13,)
    assert curve[-1] == 0
    with torch.no_grad():
        y = teacher(x)
        assert curve[0].item() == pytest.approx((y - y.mean(0)).pow(2).sum(1).mean().item())
        for rank in (1, 4, 11, 12):
            measured = mean_sq_error(y, compress_data_aware(teacher, x, rank)(x))
            assert measured == pytest.approx(curve[rank].item(), rel=1e-8, abs=1e-12)


def test_full_rank_svd_and_data_aware_reproduce_the_teacher():
    teacher = make_linear(10, 10, seed=0)
    x = correlated_inputs(50, 10, seed=0)
    with torch.no_grad():
        torch.testing.assert_close(compress_svd(teacher, 10).dense_weight(), teacher.weight)
        torch.testing.assert_close(compress_svd(teacher, 10)(x), teacher(x))
        torch.testing.assert_close(compress_data_aware(teacher, x, 10)(x), teacher(x))


def test_svd_is_eckart_young_and_keeps_the_bias():
    teacher = make_linear(30, 20, seed=1)
    student = compress_svd(teacher, 6)
    s = np.linalg.svd(teacher.weight.detach().numpy(), compute_uv=False)
    error = (teacher.weight - student.dense_weight()).pow(2).sum().item()
    assert error == pytest.approx((s[6:] ** 2).sum(), rel=1e-10)
    torch.testing.assert_close(student.bias, teacher.bias)
    # balanced factors: both carry sqrt of the singular values
    torch.testing.assert_close(student.up.norm(dim=0), student.down.norm(dim=1))


def test_bias_refit_matches_least_squares_intercept():
    x = correlated_inputs(120, 12, seed=5, mean_scale=10.0)
    teacher = make_linear(12, 9, seed=5)
    student = compress_data_aware(teacher, x, 3)
    w_low = student.dense_weight().detach()
    with torch.no_grad():
        y = teacher(x)
        # For the fixed low-rank weight, the least-squares intercept is mean(y - x W'^T).
        intercept = (y - x @ w_low.T).mean(0)
        expected = teacher.bias + (teacher.weight - w_low) @ x.mean(0)
    torch.testing.assert_close(student.bias.detach(), intercept)
    torch.testing.assert_close(student.bias.detach(), expected)
    # and the student's mean output equals the teacher's
    torch.testing.assert_close(student(x).mean(0), y.mean(0))


def test_bias_free_teacher_gets_a_bias():
    teacher = make_linear(8, 8, seed=2, bias=False)
    x = correlated_inputs(40, 8, seed=2)
    student = compress_data_aware(teacher, x, 2)
    assert student.bias is not None
    torch.testing.assert_close(student(x).mean(0), teacher(x).mean(0))


def test_fewer_rows_than_dimensions_singular_covariance():
    # 10 rows in 40 dimensions: the covariance has rank 9, so rank 15 must be exact on them.
    x = correlated_inputs(10, 40, seed=4)
    teacher = make_linear(40, 40, seed=4)
    student = compress_data_aware(teacher, x, 15)
    with torch.no_grad():
        torch.testing.assert_close(student(x), teacher(x), atol=1e-9, rtol=1e-9)
    assert torch.isfinite(student.up).all() and torch.isfinite(student.down).all()


def test_float32_teacher_gives_float32_student_decomposed_in_float64():
    torch.manual_seed(0)
    teacher = nn.Linear(64, 64)
    x = correlated_inputs(500, 64, seed=7).float()
    student = compress_data_aware(teacher, x, 8)
    assert student.up.dtype == torch.float32
    reference = compress_data_aware(teacher.double(), x.double(), 8)
    with torch.no_grad():
        torch.testing.assert_close(student(x).double(), reference(x.double()), atol=1e-4, rtol=1e-4)


def test_lowrank_linear_shapes_and_counts():
    layer = LowRankLinear(320, 256, 16)
    assert layer(torch.randn(3, 320)).shape == (3, 256)
    assert num_parameters(layer) == lowrank_parameters(320, 256, 16) == 16 * (320 + 256) + 256
    assert flop_ratio(1280, 1280, 64) == pytest.approx(10.0)
    with pytest.raises(ValueError):
        LowRankLinear(8, 8, 9)
    up, down, bias = torch.randn(5, 2), torch.randn(2, 7), torch.randn(5)
    module = LowRankLinear.from_factors(up, down, bias)
    x = torch.randn(4, 7)
    torch.testing.assert_close(module(x), x @ (up @ down).T + bias)
