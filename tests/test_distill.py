from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import correlated_inputs
from distil_rank.distill import DistillSettings, distill, distill_loss, epoch_batches
from distil_rank.lowrank import LowRankLinear, compress_data_aware, compress_svd

SETTINGS = DistillSettings(steps=50, lr=3e-3, batch_size=32, alpha=0.1, weight_decay=0.0,
                           eval_every=50)
CPU = torch.device("cpu")


def toy(seed=0, dim=24):
    torch.manual_seed(seed)
    teacher = nn.Linear(dim, dim).requires_grad_(False)
    x = correlated_inputs(400, dim, seed, mean_scale=1.0).float()
    return teacher, x


def test_loss_is_mse_plus_alpha_one_minus_cosine():
    pred, target = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert distill_loss(pred, target, 0.1).item() == pytest.approx(1.0 + 0.1 * 1.0)
    assert distill_loss(target, target, 0.5).item() == pytest.approx(0.0, abs=1e-7)


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


def test_epoch_batches_cover_every_row_once_per_epoch():
    g = torch.Generator().manual_seed(0)
    batches = epoch_batches(10, 3, g)
    epoch = [next(batches) for _ in range(3)]  # 3 batches of 3; the 10th row waits
    rows = torch.cat(epoch)
    assert len(set(rows.tolist())) == 9
    assert all(len(b) == 3 for b in epoch)
    second = torch.cat([next(batches) for _ in range(3)])
    assert len(set(second.tolist())) == 9  # a new permutation, still without repeats


def test_the_teacher_and_student_stay_where_they_were():
    teacher, x = toy(seed=4)
    start = compress_svd(teacher, 3)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    distill(teacher, start, x, SETTINGS, seed=0, device=CPU)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not teacher.weight.requires_grad
