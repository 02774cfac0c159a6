"""Fidelity metrics: pure functions of tensors.

y is the teacher's output, y_hat the student's, both [N, D].

cosine              per-row cosine between y and y_hat (mean, 1st percentile, minimum).
rel_mse             mean((y - y_hat)^2) / mean(y^2), the published metric.
explained_variance  1 - sum||y - y_hat||^2 / sum||y - mean(y)||^2.

The first two compare against the raw output. When every output shares a large common component
(mean-pooled embeddings of one protein family do), both look near perfect whatever the student
does around that mean; explained variance measures the error against the variation that carries
the information, and is the honest headline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distil_rank.moments import input_moments


def explained_variance(y: torch.Tensor, y_hat: torch.Tensor) -> float:
    """1 - sum||y - y_hat||^2 / sum||y - mean(y)||^2 over rows; NaN when y does not vary."""
    y, y_hat = y.double(), y_hat.double()
    spread = (y - y.mean(dim=0)).pow(2).sum()
    return float("nan") if spread == 0 else (1 - (y - y_hat).pow(2).sum() / spread).item()


def fidelity(y: torch.Tensor, y_hat: torch.Tensor) -> dict[str, float]:
    y, y_hat = y.double(), y_hat.double()
    cosine = F.cosine_similarity(y_hat, y, dim=1)
    return {
        "cosine": cosine.mean().item(),
        "cosine_p1": torch.quantile(cosine, 0.01).item(),
        "cosine_min": cosine.min().item(),
        "rel_mse": ((y - y_hat).pow(2).mean() / y.pow(2).mean()).item(),
        "explained_variance": explained_variance(y, y_hat),
    }


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n, ties sharing their mean rank (as Spearman's rho needs): a run of equal sorted
    values from rank `first` to rank `last` gets (first + last) / 2."""
    values = values.double().flatten()
    sorted_values, order = values.sort()
    _, group, size = torch.unique_consecutive(sorted_values, return_inverse=True,
                                              return_counts=True)
    last = size.cumsum(0)
    ranks = torch.empty_like(values)
    ranks[order] = ((2 * last - size + 1) / 2).double()[group]  # first = last - size + 1
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation: Pearson's r of the average ranks."""
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = (ra.norm() * rb.norm()).item()
    return float("nan") if denominator == 0 else (ra @ rb).item() / denominator


def fit_ridge(features: torch.Tensor, target: torch.Tensor, alpha: float):
    """Ridge regression with intercept. The penalty is alpha times the mean eigenvalue of the
    centred features' Gram matrix, so one alpha means the same for any scale of features.
    Returns a function from features to predictions."""
    return fit_ridges(features, target, [alpha])[0]


def fit_ridges(features: torch.Tensor, target: torch.Tensor, alphas) -> list:
    """fit_ridge at every alpha, the Gram matrix formed once."""
    z = features.double()
    t = target.double()
    z_mean, t_mean = z.mean(0), t.mean()
    zc = z - z_mean
    gram, moment = zc.T @ zc, zc.T @ (t - t_mean)
    eye = torch.eye(gram.shape[0], dtype=gram.dtype)

    def predictor(alpha):
        coef = torch.linalg.solve(gram + alpha * gram.diagonal().mean() * eye, moment)
        return lambda new: (new.double() - z_mean) @ coef + t_mean

    return [predictor(alpha) for alpha in alphas]


def energy_outside_data_span(weight: torch.Tensor, x: torch.Tensor,
                             share: float = 0.99) -> float:
    """||W (I - P)||_F^2 / ||W||_F^2, P the projector on the fewest principal directions of x
    that hold `share` of its variance: the part of the layer that acts where the data does not
    vary."""
    eigenvalues, vectors = torch.linalg.eigh(input_moments(x).covariance)
    eigenvalues, vectors = eigenvalues.flip(0), vectors.flip(1)
    k = int((eigenvalues.cumsum(0) / eigenvalues.sum() < share).sum()) + 1
    inside = weight.double() @ vectors[:, :k]
    return 1 - inside.pow(2).sum().item() / weight.double().pow(2).sum().item()


def svd_discarded_energy(weight: torch.Tensor, rank: int) -> float:
    """sum_{i > r} s_i^2 / sum_i s_i^2: the share of ||W||_F^2 a rank-r SVD throws away."""
    energy = torch.linalg.svdvals(weight.double()).pow(2)
    return (energy[rank:].sum() / energy.sum()).item()
