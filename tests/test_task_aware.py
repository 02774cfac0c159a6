"""task_aware against independent references: data_aware at G = I, an exact linear readout, the
sum of discarded eigenvalues (numpy), gradient descent on the same objective, the exact
Jacobian for the Hutchinson estimate; compress_model's "output" objective; distil_task."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import correlated_inputs
from distil_rank.api import compress_linear, compress_model
from distil_rank.benchmark.compressors import (
    BenchmarkData,
    FitContext,
    fit_distil_task,
    train_students,
)
from distil_rank.distill import DistillSettings
from distil_rank.lowrank import compress_data_aware, data_aware_error_curve
from distil_rank.moments import input_moments, output_weight


def layer(d_in, d_out, seed):
    torch.manual_seed(seed)
    return nn.Linear(d_in, d_out).double().requires_grad_(False)


def weighted_error(a, b, g):
    """E ||G^(1/2) (a - b)||^2 per row, from the outputs."""
    d = a - b
    return ((d @ g) * d).sum(1).mean().item()


def random_psd(n, seed):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(n, n, generator=g, dtype=torch.float64)
    return m @ m.T / n + 0.05 * torch.eye(n, dtype=torch.float64)


def test_identity_weight_is_data_aware_exactly():
    teacher = layer(20, 16, seed=0)
    x = correlated_inputs(300, 20, seed=0)
    plain = compress_data_aware(teacher, x, 5)
    weighted = compress_data_aware(teacher, x, 5, output_weight=torch.eye(16) * 3.0)
    torch.testing.assert_close(weighted.dense_weight(), plain.dense_weight(), rtol=0, atol=1e-10)
    torch.testing.assert_close(weighted.bias, plain.bias, rtol=0, atol=1e-10)


def test_a_linear_readout_is_reproduced_at_rank_one_as_the_damping_vanishes():
    teacher = layer(12, 10, seed=1)
    x = correlated_inputs(400, 12, seed=1)
    w = torch.randn(10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    g = torch.outer(w, w)  # f(h) = w^T h: J^T J = w w^T
    errors = []
    for damping in (1e-2, 1e-4, 1e-6, 1e-8):
        student = compress_data_aware(teacher, x, 1, output_weight=g, damping=damping)
        errors.append((teacher(x) @ w - student(x) @ w).pow(2).mean().item())
    assert all(b < a for a, b in zip(errors, errors[1:]))
    assert errors[-1] < 1e-8 * (teacher(x) @ w).var().item()
    # the plain closed form has no reason to keep w^T h at rank 1
    plain = compress_data_aware(teacher, x, 1)
    assert (teacher(x) @ w - plain(x) @ w).pow(2).mean().item() > 1e3 * errors[-1]


def test_weighted_error_is_the_discarded_eigenvalues_and_gradient_descent_cannot_beat_it():
    teacher = layer(14, 9, seed=2)
    x = correlated_inputs(500, 14, seed=2)
    g = random_psd(9, seed=2)
    damping = 1e-3
    gd = g + damping * g.trace() / 9 * torch.eye(9, dtype=torch.float64)
    rank = 3
    student = compress_data_aware(teacher, x, rank, output_weight=g, damping=damping)
    achieved = weighted_error(teacher(x), student(x), gd)
    # independent: numpy's matrix square root and eigenvalues of G^(1/2) W S W^T G^(1/2)
    values, vectors = np.linalg.eigh(gd.numpy())
    root = vectors @ np.diag(np.sqrt(values)) @ vectors.T
    s = np.cov(x.numpy().T, bias=True)
    w = teacher.weight.numpy()
    eigenvalues = np.sort(np.linalg.eigvalsh(root @ w @ s @ w.T @ root))[::-1]
    assert achieved == pytest.approx(eigenvalues[rank:].sum(), rel=1e-9)
    curve = data_aware_error_curve(teacher.weight, input_moments(x), g, damping)
    assert curve[rank].item() == pytest.approx(eigenvalues[rank:].sum(), rel=1e-9)
    # gradient descent on the same objective, from the closed form, finds nothing lower
    up = student.up.detach().clone().requires_grad_()
    down = student.down.detach().clone().requires_grad_()
    bias = student.bias.detach().clone().requires_grad_()
    optimiser = torch.optim.Adam([up, down, bias], lr=1e-3)
    y = teacher(x)
    for _ in range(300):
        loss = ((y - (x @ down.T @ up.T + bias)) @ gd * (y - (x @ down.T @ up.T + bias))).sum(1)
        optimiser.zero_grad()
        loss.mean().backward()
        optimiser.step()
        assert loss.mean().item() >= achieved * (1 - 1e-9)


def test_hutchinson_estimate_converges_to_the_exact_gauss_newton_weight():
    torch.manual_seed(3)
    readout = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 5)).double()
    h = torch.randn(200, 8, dtype=torch.float64)
    exact = torch.zeros(8, 8, dtype=torch.float64)
    for row in h:
        jacobian = torch.autograd.functional.jacobian(readout, row)  # [5, 8]
        exact += jacobian.T @ jacobian / len(h)
    errors = {}
    for probes in (4, 64, 1024):
        estimate = output_weight(readout, h, probes=probes, seed=0)
        errors[probes] = ((estimate - exact).norm() / exact.norm()).item()
    # only the probes are random (the rows are the same): the relative error shrinks like
    # 1 / sqrt(probes x rows), here with a constant near 1.3
    for probes, error in errors.items():
        assert error < 4 / np.sqrt(probes * len(h)), (probes, error)
    assert errors[1024] < errors[4] / 4
    assert not any(p.grad is not None for p in readout.parameters())
    # a scalar readout is exact with no probes at all
    scalar = nn.Sequential(nn.Linear(8, 6), nn.GELU(), nn.Linear(6, 1)).double()
    exact_scalar = sum(torch.outer(j, j) for j in (
        torch.autograd.functional.jacobian(scalar, row)[0] for row in h)) / len(h)
    torch.testing.assert_close(output_weight(scalar, h, probes=1), exact_scalar)


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Linear(24, 24)
        self.second = nn.Linear(24, 3)

    def forward(self, x):
        return self.second(F.gelu(self.first(x)))


def test_output_objective_lowers_the_model_output_error_at_equal_rank():
    torch.manual_seed(4)
    reference = TwoLayer().double()
    with torch.no_grad():  # a readout that looks at few directions of the first layer
        reference.second.weight.mul_(torch.logspace(0, -2, 24, dtype=torch.float64))
    flags = {n: p.requires_grad for n, p in reference.named_parameters()}
    x = correlated_inputs(1200, 24, seed=4)
    calibration, held = list(x[:1000].split(100)), x[1000:]
    errors = {}
    for objective in ("layer", "output"):
        model = TwoLayer().double()
        model.load_state_dict(reference.state_dict())
        reports = compress_model(model, calibration, rank={"first": 4}, objective=objective,
                                 probes=8, seed=0)
        assert [r.objective for r in reports] == [objective]
        assert {n: p.requires_grad for n, p in model.named_parameters()
                if n.startswith("second")} == {k: v for k, v in flags.items()
                                               if k.startswith("second")}
        assert all(p.grad is None for p in model.parameters())
        with torch.no_grad():
            errors[objective] = (model(held) - reference(held)).pow(2).mean().item()
    assert errors["output"] < 0.5 * errors["layer"]


def test_compress_linear_target_uses_the_weighted_explained_variance():
    teacher = layer(16, 16, seed=5)
    x = correlated_inputs(400, 16, seed=5)
    g = random_psd(16, seed=5)
    student = compress_linear(teacher, x, target_explained_variance=0.9, output_weight=g)
    curve = data_aware_error_curve(teacher.weight, input_moments(x), g)
    ev = 1 - curve / curve[0]
    assert ev[student.rank] >= 0.9 > ev[student.rank - 1]
    with pytest.raises(ValueError, match="does not combine"):
        compress_linear(teacher, x, rank=2, output_weight=g, refine_steps=5)


def test_distil_task_never_ends_worse_than_its_warm_start_on_the_selection_rows():
    torch.manual_seed(6)
    first = nn.Linear(16, 16).requires_grad_(False)
    readout = nn.Sequential(nn.GELU(), nn.Linear(16, 1)).requires_grad_(False)
    x = correlated_inputs(400, 16, seed=6, mean_scale=1.0).float()
    data = BenchmarkData(train=x[:300], fit=x[:250], selection=x[250:300], val=x[300:])
    settings = DistillSettings(steps=120, lr=5e-2, batch_size=32, alpha=0.1, weight_decay=0.0,
                               eval_every=20)  # a large step size, to make drifting likely
    context = FitContext(data, settings, torch.device("cpu"), seed=0, readout=readout)
    student = fit_distil_task(first, 3, context)  # the warm start, its distillation pending
    train_students([student], torch.device("cpu"))
    with torch.no_grad():
        target = readout(first(data.selection))
        warm = F.mse_loss(readout(student.warm_start(data.selection)), target).item()
        final = F.mse_loss(readout(student.module(data.selection)), target).item()
    # the stacked trainer's product and the module's differ in float32 rounding
    assert student.details["selection_mse_warm_start"] == pytest.approx(warm, rel=1e-5)
    assert final <= warm + 1e-9
    assert final == pytest.approx(student.details["selection_mse_chosen"], rel=1e-5)


def test_the_eigenvalues_alone_match_the_weighted_spectrum_with_its_vectors():
    """output_eigenvalues (Cholesky, no vectors) against numpy's eigenvalues of R W S W^T R."""
    from distil_rank.lowrank import damped_output_weight, output_eigenvalues

    x = correlated_inputs(400, 12, seed=3)
    linear = layer(12, 9, seed=4)
    moments = input_moments(x)
    g = random_psd(9, seed=5)
    damped = damped_output_weight(g).numpy()
    values, vectors = np.linalg.eigh(damped)
    root = (vectors * np.sqrt(values)) @ vectors.T
    w = linear.weight.numpy()
    expected = np.sort(np.linalg.eigvalsh(root @ w @ moments.covariance.numpy() @ w.T @ root))
    got = output_eigenvalues(linear.weight, moments, g).numpy()
    np.testing.assert_allclose(got[::-1], np.clip(expected, 0, None), rtol=1e-9, atol=1e-12)
    plain = np.linalg.eigvalsh(w @ moments.covariance.numpy() @ w.T)[::-1]
    np.testing.assert_allclose(output_eigenvalues(linear.weight, moments).numpy(),
                               np.clip(plain, 0, None), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="not positive definite"):
        output_eigenvalues(linear.weight, moments, -torch.eye(9, dtype=torch.float64) +
                           torch.diag(torch.arange(9.0, dtype=torch.float64)) * 3)
