import copy
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import correlated_inputs, epoch_batches
from distil_rank.distill import (
    DistillJob,
    DistillResult,
    DistillSettings,
    batch_schedule,
    distill,
    distill_loss,
    distill_together,
)
from distil_rank.lowrank import LowRankLinear, compress_data_aware, compress_svd

SETTINGS = DistillSettings(steps=50, lr=3e-3, batch_size=32, alpha=0.1, weight_decay=0.0,
                           eval_every=50)
CPU = torch.device("cpu")


def toy(seed=0, dim=24):
    torch.manual_seed(seed)
    teacher = nn.Linear(dim, dim).requires_grad_(False)
    x = correlated_inputs(400, dim, seed, mean_scale=1.0).float()
    return teacher, x


def autograd_loss(pred, target, alpha):
    """The recipe's loss as PyTorch writes it, differentiated by autograd: the reference for
    distill_loss's hand-written gradient."""
    cosine = F.cosine_similarity(pred, target, dim=-1).mean(-1)
    return F.mse_loss(pred, target, reduction="none").mean((-2, -1)) + alpha * (1 - cosine)


def test_loss_is_mse_plus_alpha_one_minus_cosine():
    pred, target = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert distill_loss(pred, target, 0.1).item() == pytest.approx(1.0 + 0.1 * 1.0)
    assert distill_loss(target, target, 0.5).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("shape", [(7, 5), (3, 7, 5), (4, 6, 1)])
def test_loss_and_its_gradient_match_autograd_through_cosine_similarity(shape):
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randn(shape, generator=g, dtype=torch.float64) + 0.5
    with torch.no_grad():
        pred[..., 0, :] = 0  # a zero row: the norm's clamp, as F.cosine_similarity's
    stacked = len(shape) == 3
    alpha = torch.rand(shape[0], generator=g, dtype=torch.float64) if stacked else 0.3
    weights = torch.randn(shape[0] if stacked else (), generator=g, dtype=torch.float64)
    got = distill_loss(pred, target, alpha)
    want = autograd_loss(pred, target, alpha)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    grad_got, = torch.autograd.grad((got * weights).sum(), pred)
    grad_want, = torch.autograd.grad((want * weights).sum(), pred)
    torch.testing.assert_close(grad_got, grad_want, rtol=1e-10, atol=1e-12)
    smooth = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p: distill_loss(p, target, alpha), (smooth,))


def test_distillation_lowers_the_error_of_a_random_student():
    teacher, x = toy()
    torch.manual_seed(1)
    student = LowRankLinear(24, 24, 6)
    before = F.mse_loss(student(x), teacher(x)).item()
    result = distill(teacher, student, x, replace(SETTINGS, steps=300), seed=0, device=CPU)
    after = F.mse_loss(result.student(x), teacher(x)).item()
    assert after < 0.2 * before
    assert len(result.losses) == 300 and result.chosen_step is None
    # the input student is untouched
    assert F.mse_loss(student(x), teacher(x)).item() == before


def test_checkpoint_choice_is_never_worse_than_the_warm_start_on_held_out_rows():
    teacher, x = toy(seed=2)
    fit, holdout = x[:300], x[300:]
    warm = compress_data_aware(teacher, fit, 4)
    settings = replace(SETTINGS, steps=200, eval_every=25, lr=3e-2)  # large: drifting is likely
    result = distill(teacher, warm, fit, settings, seed=0, device=CPU, holdout_x=holdout)
    with torch.no_grad():
        warm_mse = F.mse_loss(warm(holdout), teacher(holdout)).item()
        final_mse = F.mse_loss(result.student(holdout), teacher(holdout)).item()
    assert result.checkpoints[0] == (0, pytest.approx(warm_mse))
    assert final_mse <= warm_mse + 1e-12
    assert final_mse == pytest.approx(min(m for _, m in result.checkpoints))


def test_same_seed_same_student():
    teacher, x = toy(seed=3)
    start = compress_svd(teacher, 5)
    a = distill(teacher, start, x, SETTINGS, seed=7, device=CPU).student
    b = distill(teacher, start, x, SETTINGS, seed=7, device=CPU).student
    torch.testing.assert_close(a.dense_weight(), b.dense_weight(), rtol=0, atol=0)


def test_the_batch_schedule_covers_every_row_once_per_epoch():
    g = torch.Generator().manual_seed(0)
    batches = iter(batch_schedule(10, 3, 6, g))
    epoch = [next(batches) for _ in range(3)]  # 3 batches of 3; the 10th row waits
    rows = torch.cat(epoch)
    assert len(set(rows.tolist())) == 9
    assert all(len(b) == 3 for b in epoch)
    second = torch.cat([next(batches) for _ in range(3)])
    assert len(set(second.tolist())) == 9  # a new permutation, still without repeats


def test_the_batch_schedule_is_the_first_steps_of_the_plain_loop():
    for rows, batch, steps in ((10, 3, 7), (10, 3, 3), (10, 3, 1), (5, 8, 4), (64, 64, 3)):
        plain = epoch_batches(rows, batch, torch.Generator().manual_seed(rows + steps))
        schedule = batch_schedule(rows, batch, steps, torch.Generator().manual_seed(rows + steps))
        assert torch.equal(schedule, torch.stack([next(plain) for _ in range(steps)]))


def test_the_teacher_and_student_stay_where_they_were():
    teacher, x = toy(seed=4)
    start = compress_svd(teacher, 3)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    distill(teacher, start, x, SETTINGS, seed=0, device=CPU)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not teacher.weight.requires_grad


def batched_jobs(steps: int, patience: int | None = None) -> list[DistillJob]:
    """Students that differ in everything a stack must keep apart: teacher, rank, alpha, rows
    (some fewer than a batch), seed, held-out rows and a readout (end-to-end through a frozen
    head)."""
    dim = 16
    x = correlated_inputs(300, dim, seed=5, mean_scale=1.0)
    fit, holdout = x[:250], x[250:]
    settings = DistillSettings(steps=steps, lr=1e-2, batch_size=16, alpha=0.1, weight_decay=0.01,
                               eval_every=5, patience=patience)
    g = torch.Generator().manual_seed(0)
    jobs = []
    for i, (rank, alpha, rows, held, head) in enumerate([
            (4, 0.1, x, None, False), (4, 0.0, fit, holdout, False), (4, 0.3, fit, holdout, False),
            (2, 0.1, fit, holdout, False), (4, 0.0, fit, holdout, True),
            (4, 0.0, fit, holdout, True),
            (4, 0.1, fit[:10], holdout, False), (4, 0.1, fit[:12], holdout, False)]):
        # the last two: fewer rows than a batch, so batches of 10 and of 12 rows
        teacher = nn.Linear(dim, dim).double().requires_grad_(False)
        with torch.no_grad():
            teacher.weight.copy_(torch.randn(dim, dim, generator=g, dtype=torch.float64) / 4)
        readout = nn.Sequential(nn.GELU(), nn.Linear(dim, 1)).double().requires_grad_(False) \
            if head else None
        start = compress_data_aware(teacher, rows, rank)
        jobs.append(DistillJob(teacher, start, rows, replace(settings, alpha=alpha), seed=10 + i,
                               holdout_x=held, readout=readout))
    return jobs


def plain_loop(job: DistillJob) -> DistillResult:
    """The recipe written out as a plain loop over one student, independent of the stacked
    trainer: the reference both `distill` and `distill_together` must reproduce."""
    model, settings = copy.deepcopy(job.student).requires_grad_(True), job.settings
    head = job.readout or nn.Identity()
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.lr, fused=True,
                                  weight_decay=settings.weight_decay)
    batches = epoch_batches(len(job.train_x), settings.batch_size,
                            torch.Generator().manual_seed(job.seed))
    with torch.no_grad():
        y = head(job.teacher(job.train_x))
        hy = None if job.holdout_x is None else head(job.teacher(job.holdout_x))

    def held_out():
        with torch.no_grad():
            return F.mse_loss(head(model(job.holdout_x)), hy).item()

    losses, checkpoints = [], [] if hy is None else [(0, held_out())]
    best, best_step = copy.deepcopy(model.state_dict()), 0
    for step in range(1, settings.steps + 1):
        idx = next(batches)
        loss = autograd_loss(head(model(job.train_x[idx])), y[idx], settings.alpha)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        if hy is not None and (step % settings.eval_every == 0 or step == settings.steps):
            checkpoints.append((step, held_out()))
            if checkpoints[-1][1] < min(m for _, m in checkpoints[:-1]):
                best, best_step = copy.deepcopy(model.state_dict()), step
            if settings.patience is not None and step - best_step >= settings.patience:
                break
    if hy is not None:
        model.load_state_dict(best)
    return DistillResult(model, losses, checkpoints, None if hy is None else best_step,
                         steps_run=len(losses))


def one_by_one(jobs):
    return [distill(j.teacher, j.student, j.train_x, j.settings, seed=j.seed, device=CPU,
                    holdout_x=j.holdout_x, readout=j.readout) for j in jobs]


def test_batched_students_match_one_by_one_after_ten_steps_in_float64():
    jobs = batched_jobs(steps=10)
    for batched, alone, reference in zip(distill_together(jobs, CPU), one_by_one(jobs),
                                         map(plain_loop, jobs)):
        for got, one, want in zip(batched.student.parameters(), alone.student.parameters(),
                                  reference.student.parameters()):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
            torch.testing.assert_close(one, want, rtol=0, atol=1e-10)
        assert batched.losses == pytest.approx(reference.losses, abs=1e-10)
        assert batched.steps_run == reference.steps_run == 10


def test_batched_full_run_keeps_the_same_checkpoint_and_the_same_early_stop():
    jobs = batched_jobs(steps=120, patience=20)
    batched = distill_together(jobs, CPU)
    for got, reference in zip(batched, map(plain_loop, jobs)):
        assert got.chosen_step == reference.chosen_step
        assert got.steps_run == reference.steps_run
        assert [s for s, _ in got.checkpoints] == [s for s, _ in reference.checkpoints]
        assert [m for _, m in got.checkpoints] == pytest.approx(
            [m for _, m in reference.checkpoints], rel=1e-9)
        torch.testing.assert_close(got.student.dense_weight(),
                                   reference.student.dense_weight(), rtol=0, atol=1e-9)
    held = [r for r, j in zip(batched, jobs) if j.holdout_x is not None]
    # early stopping: a student stops `patience` steps after its best checkpoint, or at the end
    for result in held:
        assert result.steps_run == min(result.chosen_step + 20, 120)
    assert any(r.steps_run < 120 for r in held) and any(r.chosen_step > 0 for r in held)


def test_batched_cuda_graph_request_falls_back_to_eager_off_cuda():
    jobs = batched_jobs(steps=10)[:2]
    eager = distill_together(jobs, CPU, cuda_graph=False)
    asked = distill_together(jobs, CPU, cuda_graph=True)
    for a, b in zip(eager, asked):
        assert torch.equal(a.student.dense_weight(), b.student.dense_weight())


def test_batched_training_refuses_a_student_it_cannot_stack():
    teacher, x = toy()
    with pytest.raises(TypeError, match="LowRankLinear"):
        distill_together([DistillJob(teacher, nn.Linear(24, 24), x, SETTINGS, seed=0)], CPU)
