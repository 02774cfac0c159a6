"""Streaming first and second moments of calibration inputs, in float64.

The closed-form compressor needs only the count, mean and covariance of the inputs, so they can
be accumulated over any number of batches with O(D^2) memory and merged across workers.
Each batch is reduced to (count, mean, M2 = sum of centred outer products) and partial results
are combined with the pairwise update of Chan, Golub & LeVeque (1979):

    n = n_a + n_b,  delta = mean_b - mean_a,
    mean = mean_a + delta * n_b / n,
    M2 = M2_a + M2_b + outer(delta, delta) * n_a * n_b / n,

which never subtracts two large sums, so a large common mean (as embeddings have) costs no
precision, unlike the textbook sum(x x^T) / n - mean mean^T.
"""

from __future__ import annotations

import torch

from distil_rank.lowrank import InputMoments


class MomentAccumulator:
    def __init__(self, dim: int, device: torch.device | str = "cpu"):
        self.dim = dim
        self.count = 0
        self.mean = torch.zeros(dim, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(dim, dim, dtype=torch.float64, device=device)

    def update(self, batch: torch.Tensor) -> "MomentAccumulator":
        """Add a [B, D] batch (any float dtype; leading dimensions are flattened)."""
        batch = batch.detach().reshape(-1, batch.shape[-1])
        if batch.shape[-1] != self.dim:
            raise ValueError(f"batch has dimension {batch.shape[-1]}, expected {self.dim}")
        if batch.shape[0] == 0:
            return self
        x = batch.to(device=self.mean.device, dtype=torch.float64)
        mean = x.mean(dim=0)
        centred = x - mean
        return self._merge(x.shape[0], mean, centred.T @ centred)

    def merge(self, other: "MomentAccumulator") -> "MomentAccumulator":
        if other.dim != self.dim:
            raise ValueError(f"cannot merge moments of dimension {other.dim} into {self.dim}")
        return self._merge(other.count, other.mean.to(self.mean.device),
                           other.m2.to(self.m2.device))

    def _merge(self, count: int, mean: torch.Tensor, m2: torch.Tensor) -> "MomentAccumulator":
        if count == 0:
            return self
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + m2 + torch.outer(delta, delta) * (self.count * count / total)
        self.count = total
        return self

    def moments(self) -> InputMoments:
        if self.count == 0:
            raise ValueError("no calibration rows were seen")
        covariance = self.m2 / self.count
        return InputMoments(self.count, self.mean.clone(), (covariance + covariance.T) / 2)


def moments_of(batches, dim: int | None = None) -> InputMoments:
    """Moments of a tensor [N, D] or of an iterable of [B, D] batches, in one pass."""
    if isinstance(batches, torch.Tensor):
        batches = [batches]
    accumulator = None
    for batch in batches:
        if accumulator is None:
            accumulator = MomentAccumulator(dim or batch.shape[-1])
        accumulator.update(batch)
    if accumulator is None:
        raise ValueError("no calibration batches were given")
    return accumulator.moments()
