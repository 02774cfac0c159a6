import math

import pytest
import torch

from distil_rank.metrics import average_ranks, fidelity, fit_ridge, spearman


def test_perfect_and_mean_predictions():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(100, 6, generator=g, dtype=torch.float64) + 5
    perfect = fidelity(y, y.clone())
    assert perfect["explained_variance"] == pytest.approx(1.0)
    assert perfect["rel_mse"] == 0
    assert perfect["cosine"] == pytest.approx(1.0)
    mean_only = fidelity(y, y.mean(0).expand_as(y))
    assert mean_only["explained_variance"] == pytest.approx(0.0, abs=1e-12)


def test_hand_computed_values():
    y = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    y_hat = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
    m = fidelity(y, y_hat)
    assert m["rel_mse"] == pytest.approx((1 / 4) / (5 / 4))
    # spread around the mean (0.5, 1): 0.25 + 1 + 0.25 + 1 = 2.5; squared error 1
    assert m["explained_variance"] == pytest.approx(1 - 1 / 2.5)
    assert m["cosine"] == pytest.approx((1 / math.sqrt(2) + 1) / 2)
    assert m["cosine_min"] == pytest.approx(1 / math.sqrt(2))


def test_common_mean_flatters_cosine_but_not_explained_variance():
    # Outputs = large shared mean + small variation; a "student" that outputs only the mean
    # has cosine ~ 1 and tiny rel_mse, but explains none of the variation.
    g = torch.Generator().manual_seed(1)
    mean = 10 * torch.randn(64, generator=g, dtype=torch.float64)
    y = mean + 0.1 * torch.randn(500, 64, generator=g, dtype=torch.float64)
    m = fidelity(y, mean.expand_as(y))
    assert m["cosine"] > 0.999
    assert m["rel_mse"] < 1e-3
    assert abs(m["explained_variance"]) < 0.01  # the true mean, not the sample mean


def test_average_ranks_share_ties():
    ranks = average_ranks(torch.tensor([10.0, 20.0, 20.0, 5.0]))
    assert ranks.tolist() == [2.0, 3.5, 3.5, 1.0]
    values = torch.randint(0, 40, (500,), generator=torch.Generator().manual_seed(3)).float()
    # against the definition: one plus the values below, plus half the others equal to it
    below = (values[None, :] < values[:, None]).sum(1)
    equal = (values[None, :] == values[:, None]).sum(1) - 1
    assert torch.equal(average_ranks(values), (1 + below + equal / 2).double())


def test_spearman_against_the_classic_formula_without_ties():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(50, generator=g)
    b = a + torch.randn(50, generator=g)
    ra, rb = average_ranks(a), average_ranks(b)
    n = 50
    classic = 1 - 6 * (ra - rb).pow(2).sum().item() / (n * (n * n - 1))
    assert spearman(a, b) == pytest.approx(classic)
    assert spearman(a, a.exp()) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert math.isnan(spearman(a, torch.ones(50)))


def test_ridge_with_tiny_penalty_is_least_squares():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(80, 5, generator=g, dtype=torch.float64)
    t = z @ torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0], dtype=torch.float64) + 4
    t = t + 0.01 * torch.randn(80, generator=g, dtype=torch.float64)
    predict = fit_ridge(z, t, alpha=1e-12)
    design = torch.cat([z, torch.ones(80, 1, dtype=torch.float64)], 1)
    coef = torch.linalg.lstsq(design, t.unsqueeze(1)).solution
    torch.testing.assert_close(predict(z), (design @ coef).squeeze(1))
    # a large penalty shrinks towards the mean
    assert fit_ridge(z, t, alpha=1e6)(z).std() < 0.01 * t.std()


def test_ridges_at_every_alpha_are_the_augmented_least_squares_solutions():
    """min ||Zc c - tc||^2 + lam ||c||^2, lam = alpha * mean eigenvalue of Zc^T Zc, is least
    squares on Zc stacked over sqrt(lam) I: solved that way, alpha by alpha."""
    from distil_rank.metrics import fit_ridges

    g = torch.Generator().manual_seed(4)
    z = torch.randn(60, 4, generator=g, dtype=torch.float64) * torch.tensor([1.0, 3.0, 0.2, 5.0])
    t = z @ torch.tensor([0.5, -1.0, 2.0, 0.1], dtype=torch.float64) + 0.3 * torch.randn(
        60, generator=g, dtype=torch.float64) - 2
    alphas = [1e-3, 0.1, 10.0]
    zc, tc = z - z.mean(0), t - t.mean()
    for alpha, predict in zip(alphas, fit_ridges(z, t, alphas)):
        lam = alpha * torch.trace(zc.T @ zc) / 4
        design = torch.cat([zc, lam.sqrt() * torch.eye(4, dtype=torch.float64)])
        coef = torch.linalg.lstsq(design, torch.cat([tc, torch.zeros(4, dtype=torch.float64)])
                                  .unsqueeze(1)).solution.squeeze(1)
        torch.testing.assert_close(predict(z), zc @ coef + t.mean())


def test_svd_discarded_energy_is_the_share_beyond_the_rank():
    """A weight built with singular values 4, 3, 2, 1: at rank r the discarded share is the
    sum of the squares beyond the r-th over 30."""
    import torch

    from distil_rank.metrics import svd_discarded_energy

    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(6, 4, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(5, 4, generator=g, dtype=torch.float64))
    weight = u @ torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=torch.float64)) @ v.T
    for rank, kept in ((0, 30), (1, 14), (2, 5), (3, 1), (4, 0)):
        assert abs(svd_discarded_energy(weight, rank) - kept / 30) < 1e-12
