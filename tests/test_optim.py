"""distil_rank.optim.Adam takes torch.optim's steps bit for bit, without importing torch._dynamo."""

import subprocess
import sys

import pytest
import torch

from distil_rank.optim import Adam


def _train(make, fused, steps=25):
    """A few steps on a small least-squares problem, from the same start and batches."""
    g = torch.Generator().manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(2, 6, 5, generator=g))
    bias = torch.nn.Parameter(torch.randn(2, 6, generator=g))
    frozen = torch.nn.Parameter(torch.randn(3, generator=g))  # never gets a gradient
    optimiser = make([weight, bias, frozen], fused)
    for _ in range(steps):
        x, y = torch.randn(2, 8, 5, generator=g), torch.randn(2, 8, 6, generator=g)
        loss = (torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2)) - y).pow(2).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return weight.detach(), bias.detach(), frozen.detach(), optimiser


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("decoupled, weight_decay", [(False, 0.0), (False, 0.05), (True, 0.01),
                                                     (True, 0.0)])
def test_adam_and_adamw_take_torch_optims_steps_exactly(fused, decoupled, weight_decay):
    reference = torch.optim.AdamW if decoupled else torch.optim.Adam
    theirs = _train(lambda p, f: reference(p, lr=3e-3, weight_decay=weight_decay, fused=f), fused)
    ours = _train(lambda p, f: Adam(p, lr=3e-3, weight_decay=weight_decay, decoupled=decoupled,
                                    fused=f), fused)
    for a, b in zip(theirs[:3], ours[:3]):
        assert torch.equal(a, b)
    assert not torch.equal(ours[0], _train(lambda p, f: Adam(p, lr=3e-3), fused, steps=0)[0])


def test_zero_grad_keeps_or_drops_the_gradient():
    p = torch.nn.Parameter(torch.ones(3))
    optimiser = Adam([p], lr=0.1)
    p.sum().backward()
    optimiser.zero_grad(set_to_none=False)
    assert torch.equal(p.grad, torch.zeros(3))
    optimiser.zero_grad()
    assert p.grad is None


def test_training_does_not_import_dynamo_or_sympy():
    """What the optimiser is for: a distillation, seeded layers and a head's output weight
    (the benchmark's training path) leave both unimported: 1.5 s of every process."""
    code = ("import sys, torch\n"
            "from distil_rank.distill import DistillSettings, distill\n"
            "from distil_rank.lowrank import seeded_linear, compress_svd\n"
            "teacher = seeded_linear(8, 8, torch.Generator().manual_seed(0))\n"
            "distill(teacher, compress_svd(teacher, 2), torch.randn(64, 8),\n"
            "        DistillSettings(steps=3, batch_size=16), seed=0,\n"
            "        device=torch.device('cpu'))\n"
            "from distil_rank.moments import output_weight\n"
            "from distil_rank.benchmark.teachers import spectral_teacher\n"
            "head = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Tanh(),\n"
            "                           torch.nn.Linear(4, 2))\n"
            "output_weight(head, torch.randn(16, 8)), spectral_teacher(8, seed=0, tau=0.1)\n"
            "print(sorted(m for m in ('torch._dynamo', 'sympy') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
