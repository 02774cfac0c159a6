"""The three teacher strategies, each a frozen nn.Linear(D, D) with bias.

Random        PyTorch's default initialisation (Kaiming-uniform weight, uniform bias): a layer
              with a flat spectrum, the hardest case for any low-rank method.
Task-Trained  trained by Adam on a denoising proxy task over the training embeddings,
              x + noise -> x, from the Random-style initialisation. What a head trained on
              embeddings looks like: its action on the data's directions is learned, the rest
              stays close to its initialisation.
Spectral      orthogonal U, V and singular values exp(-i / (tau * D)): a layer that truly is
              nearly low rank, the easy case.
"""

from __future__ import annotations

import torch
from torch import nn

TEACHER_NAMES = ("Random", "Task-Trained", "Spectral")


def _freeze(layer: nn.Linear) -> nn.Linear:
    layer.requires_grad_(False)
    return layer.eval()


def random_teacher(dim: int, seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    return _freeze(nn.Linear(dim, dim))


def task_trained_teacher(train_x: torch.Tensor, *, seed: int, steps: int, lr: float,
                         batch_size: int, noise: float) -> tuple[nn.Linear, list[float]]:
    """Denoising: minimise ||layer(x + e) - x||^2 with e ~ N(0, (noise * spread)^2 I), where
    spread is the root-mean-square per-coordinate deviation of the embeddings from their mean
    (so the noise is on the scale of the data's own variation, not of its large common mean)."""
    dim = train_x.shape[1]
    torch.manual_seed(seed)
    layer = nn.Linear(dim, dim)
    g = torch.Generator().manual_seed(seed)
    spread = (train_x - train_x.mean(0)).pow(2).mean().sqrt()
    sigma = float(noise * spread)
    optimiser = torch.optim.Adam(layer.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        idx = torch.randint(train_x.shape[0], (min(batch_size, train_x.shape[0]),), generator=g)
        clean = train_x[idx]
        noisy = clean + sigma * torch.randn(clean.shape, generator=g)
        loss = (layer(noisy) - clean).pow(2).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    return _freeze(layer), losses


def spectral_teacher(dim: int, *, seed: int, tau: float) -> nn.Linear:
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    singular = torch.exp(-torch.arange(dim, dtype=torch.float64) / (tau * dim))
    layer = nn.Linear(dim, dim)
    with torch.no_grad():
        layer.weight.copy_(u @ torch.diag(singular) @ v.T)
        bound = dim**-0.5  # the default bias init of nn.Linear
        layer.bias.copy_((torch.rand(dim, generator=g, dtype=torch.float64) * 2 - 1) * bound)
    return _freeze(layer)


def build_teachers(train_x: torch.Tensor, *, seed: int, teacher_steps: int, teacher_lr: float,
                   teacher_batch_size: int, denoise_noise: float, spectral_tau: float):
    """All three teachers (on the CPU, float32) and the denoising loss curve."""
    dim = train_x.shape[1]
    trained, losses = task_trained_teacher(
        train_x, seed=seed + 1, steps=teacher_steps, lr=teacher_lr,
        batch_size=teacher_batch_size, noise=denoise_noise,
    )
    teachers = {
        "Random": random_teacher(dim, seed),
        "Task-Trained": trained,
        "Spectral": spectral_teacher(dim, seed=seed + 2, tau=spectral_tau),
    }
    return teachers, {"Task-Trained": losses}
