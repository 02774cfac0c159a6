import copy
from dataclasses import replace

import pytest
import torch
from torch import nn

from conftest import correlated_inputs
from distil_rank.benchmark.teachers import (
    HeadSettings,
    TeacherSettings,
    build_teachers,
    fitness_head,
    random_teacher,
    spectral_teacher,
    task_trained_teacher,
)
from distil_rank.lowrank import compress_svd
from distil_rank.metrics import energy_outside_data_span, explained_variance


def test_random_teacher_is_pytorch_default_init():
    torch.manual_seed(11)
    reference = nn.Linear(16, 16)
    teacher = random_teacher(16, seed=11)
    torch.testing.assert_close(teacher.weight, reference.weight)
    assert not teacher.weight.requires_grad


def test_spectral_teacher_has_the_stated_singular_values():
    teacher = spectral_teacher(40, seed=0, tau=0.1)
    s = torch.linalg.svdvals(teacher.weight.double())
    expected = torch.exp(-torch.arange(40, dtype=torch.float64) / 4.0)
    torch.testing.assert_close(s, expected, atol=1e-6, rtol=1e-5)


def test_task_trained_teacher_learns_to_denoise():
    x = correlated_inputs(500, 20, seed=0, mean_scale=2.0).float()
    settings = TeacherSettings(steps=300, lr=1e-2, batch_size=64,
                               denoise_noise=0.5, spectral_tau=0.1)
    teacher, losses = task_trained_teacher(x, settings, seed=0)
    assert losses[-1] < 0.05 * losses[0]
    untrained = random_teacher(20, seed=0)
    with torch.no_grad():
        trained_error = (teacher(x) - x).pow(2).mean()
        untrained_error = (untrained(x) - x).pow(2).mean()
    assert trained_error < 0.05 * untrained_error


def test_teachers_leave_the_global_random_state_alone():
    x = correlated_inputs(200, 12, seed=1).float()
    settings = TeacherSettings(steps=5, lr=1e-3, batch_size=32,
                               denoise_noise=0.5, spectral_tau=0.1)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = build_teachers(x, settings, seed=4)
    assert torch.equal(torch.rand(3), expected)
    again = build_teachers(x, settings, seed=4)
    for name, teacher in first.items():
        assert torch.equal(teacher.layer.weight, again[name].layer.weight), name
        assert teacher.readout is None


def test_fitness_head_reads_raw_embeddings_after_folding_its_standardisation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1200, 10, generator=g) * torch.logspace(-2, 1, 10) + 50.0  # big mean, scales
    u = (x - x.mean(0)) / x.std(0)
    y = torch.tanh(u[:, 0]) * u[:, 1] + 0.5 * u[:, 2]
    settings = HeadSettings(steps=800, lr=3e-3, batch_size=128, eval_every=50)
    torch.manual_seed(1)
    expected = torch.rand(2)
    torch.manual_seed(1)
    teacher, (selection_mse, kept) = fitness_head(x[:800], y[:800], x[800:1000], y[800:1000],
                                                  settings, seed=0)
    assert torch.equal(torch.rand(2), expected)  # the global random state is untouched
    assert min(selection_mse) == selection_mse[kept // 50] and kept % 50 == 0
    with torch.no_grad():
        predicted = teacher.readout(teacher.layer(x[1000:])).squeeze(-1)
    assert torch.corrcoef(torch.stack([predicted, y[1000:]]))[0, 1] > 0.95
    assert not any(p.requires_grad for p in teacher.readout.parameters())


def test_energy_outside_data_span_is_the_share_of_the_weight_acting_off_the_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 3, generator=g, dtype=torch.float64) @ torch.eye(3, 6, dtype=torch.float64)
    weight = torch.zeros(6, 6, dtype=torch.float64)
    weight[0, 0], weight[1, 4] = 3.0, 4.0  # 9 of the energy on a data axis, 16 off it
    assert energy_outside_data_span(weight, x) == pytest.approx(16 / 25)


def test_task_trained_recipes_differ_in_the_weight_they_leave_outside_the_data():
    """The property behind the recipe ablation: in the benchmark's regime (AdamW at 1e-3 for a
    few hundred steps) the denoising gradient pulls only slowly on the directions in which the
    embeddings do not vary, so what the initialisation put there stays, and a rank-r SVD must
    spend its rank on it. From a zero or small start there is little to keep; more steps shrink
    the default start's leftover."""
    g = torch.Generator().manual_seed(0)
    latent = torch.randn(2000, 4, generator=g) * torch.tensor([3.0, 2.0, 1.0, 0.5])
    x = latent @ torch.randn(4, 48, generator=g) + 0.01 * torch.randn(2000, 48, generator=g) + 5.0
    base = TeacherSettings(steps=300, lr=1e-3, batch_size=128,
                           denoise_noise=0.5, spectral_tau=0.1)
    outside, svd_ev = {}, {}
    for init, steps in (("default", 300), ("small", 300), ("zero", 300), ("default", 1200)):
        teacher, _ = task_trained_teacher(x, replace(base, init=init,
                                                     steps=steps), seed=0)
        outside[init, steps] = energy_outside_data_span(teacher.weight, x)
        with torch.no_grad():
            svd_ev[init, steps] = explained_variance(teacher(x), compress_svd(teacher, 4)(x))
    assert outside["default", 300] > 0.6 > 0.4 > outside["zero", 300]
    assert outside["small", 300] < 0.4
    assert outside["zero", 300] < outside["default", 1200] < outside["default", 300]
    assert svd_ev["zero", 300] > 0.99 and svd_ev["small", 300] > 0.99
    assert svd_ev["default", 300] < 0.8


def test_task_trained_teacher_refuses_an_unknown_initialisation():
    settings = TeacherSettings(steps=1, lr=1e-3, batch_size=8,
                               denoise_noise=0.5, spectral_tau=0.1, init="ones")
    with pytest.raises(ValueError, match="teacher init 'ones'"):
        task_trained_teacher(torch.randn(10, 4), settings, seed=0)


def test_task_trained_teachers_stacked_equal_a_plain_loop_per_seed():
    """The stacked denoising run against the loop written out here, one seed at a time with
    its own nn.Linear and AdamW: the same teachers and losses, to a batched product's
    rounding."""
    from distil_rank.benchmark.teachers import TEACHER_INIT_SCALES, task_trained_teachers
    from distil_rank.lowrank import seeded_linear

    x = correlated_inputs(300, 12, seed=2).float()
    settings = TeacherSettings(steps=40, lr=1e-2, batch_size=32, denoise_noise=0.5,
                               spectral_tau=0.1, init="small", weight_decay=0.01)
    stacked = task_trained_teachers(x, settings, [3, 4, 5])
    for seed, (teacher, losses) in zip([3, 4, 5], stacked):
        g = torch.Generator().manual_seed(seed)
        layer = seeded_linear(12, 12, g)
        with torch.no_grad():
            for p in layer.parameters():
                p.mul_(TEACHER_INIT_SCALES["small"])
        sigma = 0.5 * float((x - x.mean(0)).pow(2).mean().sqrt())
        optimiser = torch.optim.AdamW(layer.parameters(), lr=1e-2, weight_decay=0.01)
        expected = []
        for _ in range(40):
            clean = x[torch.randint(300, (32,), generator=g)]
            loss = (layer(clean + sigma * torch.randn(clean.shape, generator=g)) - clean).pow(
                2).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            expected.append(loss.item())
        torch.testing.assert_close(teacher.weight, layer.weight.detach(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(torch.tensor(losses), torch.tensor(expected), rtol=1e-4,
                                   atol=1e-6)


def _plain_train_head(head, x, y, selection_x, selection_y, settings, generator):
    """train_head's rule written out for one module: Adam on one random batch a step, the
    selection MSE every eval_every steps (and the last), the best checkpoint kept."""
    optimiser = torch.optim.Adam(head.parameters(), lr=settings.lr)
    curve, best = [], (float("inf"), None, 0)
    for step in range(settings.steps + 1):
        if step % settings.eval_every == 0 or step == settings.steps:
            with torch.no_grad():
                mse = (head(selection_x).squeeze(-1) - selection_y).pow(2).mean().item()
            curve.append(mse)
            if mse < best[0]:
                best = (mse, copy.deepcopy(head.state_dict()), step)
        if step == settings.steps:
            break
        idx = torch.randint(len(x), (min(settings.batch_size, len(x)),), generator=generator)
        loss = (head(x[idx]).squeeze(-1) - y[idx]).pow(2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    head.load_state_dict(best[1])
    return curve, best[2]


def _toy_rows(n=900, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g) * torch.logspace(-1, 1, dim) + 20.0
    y = torch.tanh(x[:, 0]) + 0.3 * x[:, 3] + 0.1 * torch.randn(n, generator=g)
    return x, y


def test_fitness_heads_stacked_equal_a_plain_loop_per_seed():
    """Three seeds' Fitness-Heads, with different row counts, trained as one stack against a
    plain one-module loop seed by seed: the same folded first layer, readout, selection MSEs
    and kept step, to a batched product's rounding."""
    from distil_rank.benchmark.teachers import Standardisation, fitness_heads
    from distil_rank.lowrank import seeded_linear

    x, y = _toy_rows()
    settings = HeadSettings(steps=120, lr=3e-3, batch_size=64, eval_every=20)
    bounds = [(0, 150, 200), (200, 380, 420), (420, 560, 640)]  # fit, selection of each seed
    rows = [(x[a:b], y[a:b], x[b:c], y[b:c]) for a, b, c in bounds]
    stacked = fitness_heads(rows, settings, [7, 8, 9])
    for seed, (fx, fy, sx, sy), (teacher, (mse, kept)) in zip([7, 8, 9], rows, stacked):
        gen = torch.Generator().manual_seed(seed)
        scale = Standardisation.of(fx, fy)
        head = torch.nn.Sequential(seeded_linear(8, 8, gen), torch.nn.GELU(),
                                   seeded_linear(8, 1, gen))
        expected_mse, expected_step = _plain_train_head(head, scale.x(fx), scale.y(fy),
                                                        scale.x(sx), scale.y(sy), settings, gen)
        torch.testing.assert_close(torch.tensor(mse), torch.tensor(expected_mse), rtol=1e-4,
                                   atol=1e-6)
        assert kept == expected_step
        with torch.no_grad():
            folded = teacher.readout(teacher.layer(sx)).squeeze(-1)
            plain = head(scale.x(sx)).squeeze(-1)
        torch.testing.assert_close(folded, plain, rtol=1e-4, atol=1e-4)


def test_train_heads_groups_mixed_heads_and_each_is_the_one_it_would_be_alone():
    """Low-rank and dense heads (a low-rank readout, a bare Linear), two learning rates, shared
    and own inputs, small batches clipped by the row count, and heads of another activation:
    train_heads against the plain loop, job by job, in float64 (in float32 Adam turns the
    rounding of a near-zero gradient into a whole step of either sign, which no tolerance on
    the weights would mean much for)."""
    from distil_rank.benchmark.teachers import HeadJob, train_heads
    from distil_rank.lowrank import LowRankLinear, seeded_linear

    x, y = (t.double() for t in _toy_rows(n=700))
    fit_x, sel_x = x[:500], x[500:]
    small = x[:40]  # a batch of 64 is clipped to its 40 rows
    fast = HeadSettings(steps=60, lr=3e-3, batch_size=64, eval_every=15)
    slow = replace(fast, lr=1e-3)

    def make(kind, g):  # "tanh": a head the batched products do not cover (vmap trains it)
        if kind == "bare":  # one Linear readout, no Sequential
            return seeded_linear(8, 1, g).double()
        first = LowRankLinear(8, 8, 3, generator=g) if kind.startswith("low") else \
            seeded_linear(8, 8, g)
        middle = torch.nn.Tanh() if kind == "tanh" else torch.nn.GELU()
        last = LowRankLinear(8, 1, 1, generator=g) if kind == "low readout" else \
            seeded_linear(8, 1, g)
        return torch.nn.Sequential(first, middle, last).double()

    specs = [("low", fit_x, y[:500], fast), ("low", fit_x, -y[:500], fast),
             ("low", fit_x, y[:500], slow), ("dense", fit_x, y[:500], fast),
             ("dense", small, y[:40], fast), ("low", fit_x[:300], y[:300], fast),
             ("tanh", fit_x, y[:500], fast), ("tanh", fit_x[:200], y[:200], fast),
             ("low readout", fit_x, y[:500], fast), ("bare", fit_x, y[:500], fast)]
    heads = [make(kind, torch.Generator().manual_seed(k)) for k, (kind, *_) in enumerate(specs)]
    plain = [copy.deepcopy(h) for h in heads]
    jobs = [HeadJob(h, fx, fy, sel_x, y[500:], s, torch.Generator().manual_seed(100 + k))
            for k, (h, (_, fx, fy, s)) in enumerate(zip(heads, specs))]
    results = train_heads(jobs)
    for k, ((curve, kept), head, reference) in enumerate(zip(results, heads, plain)):
        _, fx, fy, s = specs[k]
        expected = _plain_train_head(reference, fx, fy, sel_x, y[500:], s,
                                     torch.Generator().manual_seed(100 + k))
        torch.testing.assert_close(torch.tensor(curve), torch.tensor(expected[0]), rtol=1e-9,
                                   atol=1e-12)
        assert kept == expected[1]
        for got, want in zip(head.parameters(), reference.parameters()):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
