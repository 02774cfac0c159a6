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


def test_output_weight_reads_the_head_as_it_runs_dropout_off_and_gives_its_mode_back():
    """A readout left in training mode would put dropout noise in G: G is taken in eval mode,
    the same in either mode, and equal to the exact G of the head without its dropout."""
    from torch import nn

    from distil_rank.moments import output_weight

    torch.manual_seed(14)
    readout = nn.Sequential(nn.Dropout(0.5), nn.GELU(), nn.Linear(12, 1))
    hidden = torch.randn(300, 12)
    weights = []
    for training in (True, False):
        readout.train(training)
        weights.append(output_weight(readout, hidden))
        assert readout.training == training and readout[0].training == training
    exact = output_weight(nn.Sequential(readout[1], readout[2]), hidden)
    torch.testing.assert_close(weights[0], weights[1], rtol=0, atol=0)
    torch.testing.assert_close(weights[0], exact, rtol=0, atol=0)
