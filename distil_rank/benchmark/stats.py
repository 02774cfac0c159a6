"""Statistics over seeds, and the effective rank of a spectrum: pure functions."""

from __future__ import annotations

import math
import numbers
import statistics

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


MEAN, MEDIAN, PER_SEED = "mean", "median", "per_seed"  # the rules a field can declare


def aggregate(trees: list, rules: dict[str, str] | None = None, path: str = ""):
    """Combine per-seed results of the same shape into (mean tree, std tree), by the rule that
    `rules` declares for a key (MEAN when it declares none):

      MEAN            a number: its mean over seeds; the std tree holds the sample standard
                      deviation. A number equal in every seed is kept as it is (an int stays an
                      int) with std 0.
      MEDIAN          the same with the median, which one slow seed on a busy machine cannot
                      drag (timings declare it); the std tree still holds the std.
      PER_SEED        the list of the per-seed values (e.g. which checkpoint each seed kept),
                      absent from the std tree.
    Whatever the rule, a dict is combined key by key (every seed must have the same keys), a
    list of numbers of equal length element by element, and anything else (strings, None,
    other lists) must be equal in every seed and is kept: a difference is an error, never
    "the first seed's".
    """
    rules = rules or {}
    first, key = trees[0], path.rsplit(".", 1)[-1]
    rule = rules.get(key, MEAN)
    if rule not in (MEAN, MEDIAN, PER_SEED):
        raise ValueError(f"{path}: unknown rule {rule!r}")
    if isinstance(first, dict):
        if any(not isinstance(t, dict) or t.keys() != first.keys() for t in trees):
            raise ValueError(f"{path or 'result'}: seeds have different keys")
        means, stds = {}, {}
        for name in first:
            values = [t[name] for t in trees]
            if rules.get(name) == PER_SEED:
                means[name] = values
                continue
            means[name], std = aggregate(values, rules, f"{path}.{name}".lstrip("."))
            if std is not None:
                stds[name] = std
        return means, stds
    if all(_is_number(t) for t in trees):
        return _combine([float(t) for t in trees], rule == MEDIAN) \
            if any(t != first for t in trees) else (first, 0.0)
    if (isinstance(first, (list, tuple)) and first and all(_is_number(v) for v in first)
            and all(isinstance(t, (list, tuple)) and len(t) == len(first)
                    and all(_is_number(v) for v in t) for t in trees)):
        pairs = [aggregate([t[i] for t in trees], rules, path) for i in range(len(first))]
        return [p[0] for p in pairs], [p[1] for p in pairs]
    if any(t != first for t in trees):
        raise ValueError(f"{path or 'result'}: differs across seeds and has no rule to combine it")
    return first, None


def _combine(values: list[float], timing: bool) -> tuple[float, float]:
    mean, std = mean_and_std(values)
    return (statistics.median(values) if timing else mean), std


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
