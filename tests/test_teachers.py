import torch
from torch import nn

from conftest import correlated_inputs
from distil_rank.teachers import (
    TeacherSettings,
    build_teachers,
    random_teacher,
    spectral_teacher,
    task_trained_teacher,
)


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
    settings = TeacherSettings(teacher_steps=300, teacher_lr=1e-2, teacher_batch_size=64,
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
    settings = TeacherSettings(teacher_steps=5, teacher_lr=1e-3, teacher_batch_size=32,
                               denoise_noise=0.5, spectral_tau=0.1)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first, _ = build_teachers(x, settings, seed=4)
    assert torch.equal(torch.rand(3), expected)
    again, _ = build_teachers(x, settings, seed=4)
    for name, teacher in first.items():
        assert torch.equal(teacher.weight, again[name].weight), name
