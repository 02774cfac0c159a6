"""Statistics over seeds, and the effective rank of a spectrum: pure functions."""

from __future__ import annotations

import math
import numbers

import torch


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def mean_and_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for a single value). NaN-free inputs only:
    a NaN in any seed makes both NaN, so it cannot hide."""
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return mean, 0.0
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def aggregate(trees: list):
    """Combine per-seed results of the same shape into (mean tree, std tree).

    Numbers become their mean (and std); lists of numbers of equal length are combined element
    by element; dicts recurse; anything else (strings, None, ints that differ) is taken from the
    first seed in the mean tree and left out of the std tree.
    """
    first = trees[0]
    if isinstance(first, dict):
        means, stds = {}, {}
        for key in first:
            if all(isinstance(t, dict) and key in t for t in trees):
                mean, std = aggregate([t[key] for t in trees])
                means[key] = mean
                if std is not None:
                    stds[key] = std
            else:
                means[key] = first[key]
        return means, (stds or None)
    if _is_number(first) and all(_is_number(t) for t in trees):
        if all(t == first for t in trees):
            return first, 0.0  # keeps an int an int (sizes, ranks, batch sizes)
        return mean_and_std([float(t) for t in trees])
    if (isinstance(first, (list, tuple)) and first and all(_is_number(v) for v in first)
            and all(isinstance(t, (list, tuple)) and len(t) == len(first) for t in trees)):
        if all(list(t) == list(first) for t in trees):
            return list(first), [0.0] * len(first)  # keeps ranks and batch sizes ints
        pairs = [mean_and_std([float(t[i]) for t in trees]) for i in range(len(first))]
        return [p[0] for p in pairs], [p[1] for p in pairs]
    return first, None


def effective_rank(eigenvalues: torch.Tensor, shares=(0.90, 0.95, 0.99)) -> dict:
    """Participation ratio (sum l)^2 / sum l^2, and the number of components that hold each
    share of the variance."""
    lam = eigenvalues.double().clamp_min(0).sort(descending=True).values
    total = lam.sum()
    cumulative = lam.cumsum(0) / total
    result = {"participation_ratio": (total**2 / lam.pow(2).sum()).item()}
    for share in shares:
        # the first k with cumulative share >= target (a tiny tolerance for rounding at 1.0)
        k = int((cumulative < share - 1e-12).sum().item()) + 1
        result[f"components_for_{round(share * 100)}pct"] = min(k, lam.numel())
    return result


def smallest_rank_reaching(explained: list[float], targets=(0.95, 0.99, 0.999)) -> dict:
    """explained[r] is the explained variance at rank r (r = 0..D); the smallest r reaching each
    target, or None when none does."""
    found = {}
    for target in targets:
        rank = next((r for r, ev in enumerate(explained) if ev >= target), None)
        found[str(target)] = rank
    return found
