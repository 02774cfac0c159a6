"""Ranks for a parameter budget, allocated exactly across layers.

Layer l, a weight [out_l, in_l], is either kept dense (in_l out_l weights, no error) or
factorised at a rank r >= 1 (r (in_l + out_l) weights) by the closed form, whose error at every
rank, e_l(r) (the sum of the discarded eigenvalues of the layer's output covariance, G-weighted
for the output objective), comes from one eigendecomposition (lowrank.data_aware_error_curve).
Under a budget of B weights the allocation

    minimise   sum_l w_l e_l(r_l)   subject to   sum_l cost_l(r_l) <= B

is a multiple-choice knapsack. e_l is convex in r (its decrements are the sorted eigenvalues),
so a greedy over decrements per weight solves its continuous relaxation, but with unequal costs
(in_l + out_l differ between layers) the greedy's integer allocation can be beaten. A dynamic
programme over the budget, counted in units of the greatest common divisor of every cost, is
exact: after layer l, best[u] is the least weighted error of layers 1..l within u units, and
best_l[u] = min over the layer's choices c of best_{l-1}[u - cost(c)] + w_l e_l(c). For a
transformer's layers the costs share a large divisor (the width), so this takes O(layers x ranks
x B / gcd) additions, a second or two for a 6-layer MiniLM at any budget.

Weights w_l say what the errors are measured in: 1 for the output objective (each e_l is
already in units of the model's output, to second order), 1 / e_l(0) for the layer objective
(each layer's unexplained fraction of its own output variance, summed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from distil_rank.lowrank import lowrank_parameters


@dataclass(frozen=True)
class LayerChoice:
    """A layer's part of an allocation: its rank, or None to keep it dense."""

    rank: int | None
    weights: int  # weights it keeps, biases aside
    error: float  # its weighted error at that choice


def allocate_ranks(curves: dict[str, torch.Tensor], shapes: dict[str, tuple[int, int]],
                   budget: int, weights: dict[str, float] | None = None
                   ) -> dict[str, LayerChoice]:
    """The choice per layer (a rank, or dense) that minimises the summed weighted error within
    `budget` weights. curves[name][r] is the layer's error at rank r (entry 0: keep nothing);
    shapes[name] = (in_features, out_features). Raises ValueError when not even rank 1
    everywhere fits."""
    names = list(curves)
    options = {n: _options(curves[n], *shapes[n], (weights or {}).get(n, 1.0)) for n in names}
    unit = math.gcd(*[cost for n in names for cost, _, _ in options[n]])
    least = sum(min(cost for cost, _, _ in options[n]) for n in names)
    if least > budget:
        raise ValueError(f"a budget of {budget:,} weights is below {least:,}, rank 1 in every "
                         "selected layer")
    units = budget // unit
    best = np.zeros(units + 1)
    picks = []
    for n in names:
        best, pick = _add_layer(best, [(cost // unit, error) for cost, error, _ in options[n]])
        picks.append(pick)
    chosen, u = {}, int(np.argmin(best))
    for n, pick in zip(reversed(names), reversed(picks)):
        cost, error, rank = options[n][pick[u]]
        chosen[n] = LayerChoice(rank, cost, error)
        u -= cost // unit
    return {n: chosen[n] for n in names}


def _options(curve: torch.Tensor, in_features: int, out_features: int, weight: float):
    """(weights, weighted error, rank or None) of every choice that is not dominated: each rank
    that keeps fewer weights than the dense layer, and the dense layer."""
    dense = in_features * out_features
    costs = {r: lowrank_parameters(in_features, out_features, r, bias=False)
             for r in range(1, min(in_features, out_features) + 1)}
    errors = curve.double().tolist()
    return [(cost, weight * errors[r], r) for r, cost in costs.items() if cost < dense] + \
        [(dense, 0.0, None)]


def _add_layer(best: np.ndarray, options: list[tuple[int, float]]):
    """best'[u] = min over options (cost c, error e) of best[u - c] + e, and which option."""
    new = np.full_like(best, np.inf)
    pick = np.zeros(len(best), dtype=np.int32)
    for i, (cost, error) in enumerate(options):
        if cost >= len(best):
            continue
        candidate = np.full_like(best, np.inf)
        candidate[cost:] = best[:len(best) - cost] + error
        better = candidate < new
        new[better], pick[better] = candidate[better], i
    return new, pick
