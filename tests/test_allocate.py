"""The budget allocation against brute force: every combination of ranks (or dense) of a few
small layers, the least summed error within the budget."""

import itertools

import pytest
import torch

from distil_rank.allocate import _options, allocate_ranks


def curve(eigenvalues):
    """e(r): the sum of the eigenvalues beyond r, for r = 0..len."""
    values = torch.tensor(sorted(eigenvalues, reverse=True), dtype=torch.float64)
    tail = values.flip(0).cumsum(0).flip(0)
    return torch.cat([tail, tail.new_zeros(1)])


def brute_force(curves, shapes, budget, weights):
    names = list(curves)
    choices = [_options(curves[n], *shapes[n], weights[n]) for n in names]
    best = None
    for combo in itertools.product(*choices):
        cost = sum(c for c, _, _ in combo)
        error = sum(e for _, e, _ in combo)
        if cost <= budget and (best is None or error < best):
            best = error
    return best


@pytest.mark.parametrize("seed", range(6))
def test_the_allocation_equals_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    shapes = {"a": (12, 8), "b": (10, 10), "c": (16, 6), "d": (9, 14)}  # unequal costs
    curves = {n: curve((torch.rand(min(s), generator=g) ** 3 * 10).tolist())
              for n, s in shapes.items()}
    weights = {n: 1 / float(c[0]) for n, c in curves.items()}  # unexplained fractions
    dense = sum(i * o for i, o in shapes.values())
    for fraction in (0.25, 0.4, 0.6, 0.8, 1.0):
        budget = int(fraction * dense)
        chosen = allocate_ranks(curves, shapes, budget, weights)
        assert sum(c.weights for c in chosen.values()) <= budget
        total = sum(c.error for c in chosen.values())
        assert total == pytest.approx(brute_force(curves, shapes, budget, weights), abs=1e-12)
        for name, c in chosen.items():  # each layer's figure is its own curve's
            if c.rank is not None:
                assert c.error == pytest.approx(weights[name] * float(curves[name][c.rank]))


def test_a_budget_below_rank_one_everywhere_is_refused():
    shapes = {"a": (8, 8), "b": (8, 8)}
    curves = {n: curve([4.0, 2.0, 1.0, 0.5, 0.2, 0.1, 0.05, 0.01]) for n in shapes}
    with pytest.raises(ValueError, match="rank 1 in every selected layer"):
        allocate_ranks(curves, shapes, 20)


class Branches(torch.nn.Module):
    """Three layers, each reading its own slice of the input."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = (torch.nn.Linear(16, 16) for _ in range(3))

    def forward(self, x):
        return torch.cat([self.a(x[:, :16]), self.b(x[:, 16:32]), self.c(x[:, 32:])], dim=1)


def test_compress_model_keeps_the_budget_with_unequal_ranks_where_the_inputs_differ():
    from distil_rank import compress_model
    from distil_rank.api import format_report

    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    rows = 2000
    low = torch.randn(rows, 2, generator=g) @ torch.randn(2, 16, generator=g)  # rank 2
    mid = torch.randn(rows, 6, generator=g) @ torch.randn(6, 16, generator=g)  # rank 6
    full = torch.randn(rows, 16, generator=g)  # every direction
    x = torch.cat([low + 0.01 * torch.randn(rows, 16, generator=g), mid, full], dim=1)
    torch.manual_seed(0)
    model = Branches()
    reports = compress_model(model, x.split(500), budget=0.4)
    ranks = {r.name: r.rank for r in reports}
    kept = sum(16 * 16 if r is None else r * 32 for r in ranks.values())
    assert kept <= 0.4 * 3 * 16 * 16
    assert len(set(ranks.values())) == 3, ranks  # a rank each: the inputs differ
    assert ranks["a"] == 2, ranks  # its input has rank 2: more would buy nothing
    assert "weights kept (biases aside)" in format_report(reports)
    torch.manual_seed(0)  # the same model, every layer at the one rank the budget allows
    uniform = compress_model(Branches(), x.split(500), rank=int(0.4 * 16 * 16) // 32)
    assert sum(1 - r.explained_variance_calibration for r in reports) < \
        sum(1 - r.explained_variance_calibration for r in uniform)


def test_the_output_objective_allocates_within_the_budget_too():
    from distil_rank import compress_model

    g = torch.Generator().manual_seed(1)
    x = torch.randn(800, 48, generator=g) * torch.linspace(2, 0.01, 48)
    torch.manual_seed(1)
    reports = compress_model(Branches(), x.split(400), budget=0.3, objective="output",
                             holdout=x[:200].split(100))
    kept = sum(16 * 16 if r.rank is None else r.rank * 32 for r in reports)
    assert kept <= 0.3 * 3 * 16 * 16 and all(r.objective == "output" for r in reports)
    assert all(r.explained_variance_holdout is not None for r in reports if r.rank is not None)
    with pytest.raises(ValueError, match="exactly one of rank, target_explained_variance and"):
        compress_model(Branches(), x.split(400), budget=0.3, rank=2)
    with pytest.raises(ValueError, match=r"budget 1.5: expected a fraction"):
        compress_model(Branches(), x.split(400), budget=1.5)
