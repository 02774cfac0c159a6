import torch
from torch import nn

from conftest import correlated_inputs
from distil_rank.teachers import random_teacher, spectral_teacher, task_trained_teacher


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
    teacher, losses = task_trained_teacher(x, seed=0, steps=300, lr=1e-2, batch_size=64, noise=0.5)
    assert losses[-1] < 0.05 * losses[0]
    untrained = random_teacher(20, seed=0)
    with torch.no_grad():
        trained_error = (teacher(x) - x).pow(2).mean()
        untrained_error = (untrained(x) - x).pow(2).mean()
    assert trained_error < 0.05 * untrained_error
