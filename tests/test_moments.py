import pytest
import torch

from conftest import correlated_inputs
from distil_rank.moments import MomentAccumulator, input_moments, moments_of


def test_streamed_moments_equal_the_in_memory_ones():
    x = correlated_inputs(1000, 12, seed=0, mean_scale=1e3)  # a huge common mean
    reference = input_moments(x)
    streamed = moments_of(x.split(77))  # uneven batches
    assert streamed.count == 1000
    torch.testing.assert_close(streamed.mean, reference.mean, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(streamed.covariance, reference.covariance, rtol=1e-9, atol=1e-12)


def test_merge_is_order_free_and_matches_one_pass():
    x = correlated_inputs(600, 8, seed=1)
    a, b, c = MomentAccumulator(8), MomentAccumulator(8), MomentAccumulator(8)
    a.update(x[:100])
    b.update(x[100:450])
    c.update(x[450:])
    merged = MomentAccumulator(8).merge(c).merge(a).merge(b).moments()
    reference = input_moments(x)
    torch.testing.assert_close(merged.covariance, reference.covariance, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(merged.mean, reference.mean)


def test_float32_batches_with_a_large_mean_keep_their_precision():
    # Against numpy-free float64 truth: the naive E[xx^T] - mm^T in float32 would lose it all.
    x = correlated_inputs(5000, 6, seed=2, mean_scale=1e4)
    streamed = moments_of(x.float().split(500))
    reference = input_moments(x.float().double())
    torch.testing.assert_close(streamed.covariance, reference.covariance, rtol=1e-9, atol=1e-9)


def test_errors():
    acc = MomentAccumulator(4)
    with pytest.raises(ValueError, match="dimension 5"):
        acc.update(torch.randn(3, 5))
    with pytest.raises(ValueError, match="no calibration rows"):
        acc.moments()
    with pytest.raises(ValueError, match="no calibration batches"):
        moments_of([])
