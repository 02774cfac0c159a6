"""The budget allocation against brute force: every combination of ranks (or dense) of a few
small layers, the least summed error within the budget."""

import itertools

import pytest
import torch

from distil_rank.allocate import allocate_ranks


def curve(eigenvalues):
    """e(r): the sum of the eigenvalues beyond r, for r = 0..len."""
    values = torch.tensor(sorted(eigenvalues, reverse=True), dtype=torch.float64)
    tail = values.flip(0).cumsum(0).flip(0)
    return torch.cat([tail, tail.new_zeros(1)])


def brute_force(curves, shapes, budget, weights):
    """Every combination of (a rank r with r (in + out) < in out, or dense) per layer, costed
    here from first principles: a rank-r factorisation keeps r in + r out weights, a dense
    layer in out; the least weighted error within the budget, and the choice that gives it."""
    names = list(curves)
    choices = []
    for n in names:
        fan_in, fan_out = shapes[n]
        ranks = [r for r in range(1, min(fan_in, fan_out) + 1) if r * (fan_in + fan_out)
                 < fan_in * fan_out]
        choices.append([(r * (fan_in + fan_out), weights[n] * float(curves[n][r]), r)
                        for r in ranks] + [(fan_in * fan_out, 0.0, None)])
    best, picked = None, None
    for combo in itertools.product(*choices):
        cost = sum(c for c, _, _ in combo)
        error = sum(e for _, e, _ in combo)
        if cost <= budget and (best is None or error < best):
            best, picked = error, {n: (c, r) for n, (c, _, r) in zip(names, combo)}
    return best, picked


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
        best, picked = brute_force(curves, shapes, budget, weights)
        assert total == pytest.approx(best, abs=1e-12)
        for name, c in chosen.items():  # each layer's figure is its own curve's
            fan_in, fan_out = shapes[name]
            assert c.weights == (fan_in * fan_out if c.rank is None
                                 else c.rank * (fan_in + fan_out))
            if c.rank is not None:
                assert c.error == pytest.approx(weights[name] * float(curves[name][c.rank]))
        assert picked is not None


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
    with pytest.warns(UserWarning, match="less than uniform ranks"):
        reports = compress_model(model, x.split(500), budget=0.4, objective="layer")
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


class Residual(torch.nn.Module):
    """y = x + 0.05 a(x) + b(x): two layers of one shape whose errors reach the output at very
    different scales, so their relative errors are not comparable."""

    def __init__(self, d: int, g: torch.Generator):
        super().__init__()
        self.a, self.b = torch.nn.Linear(d, d), torch.nn.Linear(d, d)
        with torch.no_grad():
            u, _, v = torch.linalg.svd(torch.randn(d, d, generator=g))
            self.b.weight.copy_(u @ torch.diag(torch.logspace(0, -1.0, d)) @ v.T)

    def forward(self, x):
        return x + 0.05 * self.a(x) + self.b(x)


def _output_explained_variance(model, dense, x) -> float:
    with torch.no_grad():
        y, y_hat = dense(x), model(x)
    return (1 - (y - y_hat).pow(2).sum() / (y - y.mean(0)).pow(2).sum()).item()


def test_a_budget_with_default_arguments_never_loses_to_uniform_ranks():
    """On held-out rows of the model's output, measured here directly: the default allocation
    (no objective given) against every layer at the one rank the budget allows, and the layer
    objective, which does lose here, so that the comparison can tell the two apart."""
    import copy
    import warnings

    from distil_rank import compress_model

    g = torch.Generator().manual_seed(0)
    d = 32
    dense = Residual(d, g).requires_grad_(False)
    x = torch.randn(3000, d, generator=g)
    calibration, held = x[:2000].split(500), x[2000:]
    layer_margins = []
    for budget in (0.3, 0.5, 0.7):
        scores = {}
        for name, options in (("default", dict(budget=budget)),
                              ("layer", dict(budget=budget, objective="layer")),
                              ("uniform", dict(rank=int(budget * d * d) // (2 * d)))):
            model = copy.deepcopy(dense)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                reports = compress_model(model, calibration, **options)
            kept = sum(d * d if r.rank is None else 2 * d * r.rank for r in reports)
            assert kept <= budget * 2 * d * d
            scores[name] = _output_explained_variance(model, dense, held)
        assert scores["default"] >= scores["uniform"], (budget, scores)
        layer_margins.append(scores["uniform"] - scores["layer"])
    assert max(layer_margins) > 0.02, layer_margins  # the layer objective's loss is real


def test_the_default_output_objective_reads_a_model_output_dict_and_leaves_padding_out():
    """A model returning a dict (as a Hugging Face model returns its ModelOutput) is probed at
    its first tensor, and only at positions the attention mask keeps. Here y_t = M h_t +
    mean over all 5 positions of h, so at a kept position s, J^T v = M^T v_s + (1/5) sum_t v_t;
    with v zero at padding, E[(J^T v)(J^T v)^T] = (M^T + I/5)(M + I/5) + (k - 1)/25 I, k the
    kept positions (3 here; probing padding too would make it 5)."""
    from distil_rank.api import _layer_statistics, _Probes, output_tensor

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(8, 8)
            self.mix = torch.nn.Linear(8, 8)

        def forward(self, input_embeds, attention_mask):
            hidden = self.proj(input_embeds)
            return {"last_hidden_state": self.mix(hidden) + hidden.mean(1, keepdim=True),
                    "note": "not a tensor"}

    assert output_tensor((1, torch.ones(2), torch.zeros(3))).shape == (2,)
    assert output_tensor({"a": "x"}) == {"a": "x"}
    torch.manual_seed(0)
    model = Encoder().double().requires_grad_(False)
    mask = torch.ones(8, 5, dtype=torch.long)
    mask[:, 3:] = 0
    batch = {"input_embeds": torch.randn(8, 5, 8, dtype=torch.float64), "attention_mask": mask}
    prober = _Probes(None, 400, torch.Generator().manual_seed(1))
    stats = _layer_statistics(model, {"proj": model.proj}, [batch], None, prober,
                              {"proj": torch.float64}, skip_padding=True)
    m = model.mix.weight
    eye = torch.eye(8, dtype=torch.float64)
    expected = (m.T + eye / 5) @ (m + eye / 5)
    got = stats["proj"][1]
    per_dim = lambda k: (expected.trace() / 8 + (k - 1) / 25).item()  # noqa: E731
    measured = got.trace().item() / 8
    assert abs(measured - per_dim(3)) < 0.02 < abs(measured - per_dim(5))
    torch.testing.assert_close(got, expected + 2 / 25 * eye, atol=0.05, rtol=0)
