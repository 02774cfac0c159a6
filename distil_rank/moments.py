"""First and second moments of calibration inputs, in float64: all the closed form needs.

One home for the statistics: the `InputMoments` dataclass, the one-shot form (`input_moments`),
the streaming form (`MomentAccumulator`, `moments_of`), the merge across processes
(`all_reduce_moments`) and the file format (`save_moments`, `load_moments`); and on the output
side, the weight G = E[J^T J] of what a head's readout is sensitive to (`output_weight`).

Each batch is reduced to (count, mean, M2 = sum of centred outer products) and partial results
are combined with the pairwise update of Chan, Golub & LeVeque (1979):

    n = n_a + n_b,  delta = mean_b - mean_a,
    mean = mean_a + delta * n_b / n,
    M2 = M2_a + M2_b + outer(delta, delta) * n_a * n_b / n,

which never subtracts two large sums, so a large common mean (as embeddings have) costs no
precision, unlike the textbook sum(x x^T) / n - mean mean^T.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from distil_rank.errors import InputError, first_line
from distil_rank.files import atomic_write
from distil_rank.runtime import eval_mode


@dataclass
class InputMoments:
    """Count, mean and covariance of the calibration inputs."""

    count: int
    mean: torch.Tensor  # [D] float64
    covariance: torch.Tensor  # [D, D] float64, normalised by count (population covariance)


def input_moments(x: torch.Tensor) -> InputMoments:
    """The moments of rows held in memory, exact two-pass float64."""
    x = x.detach().double()
    mean = x.mean(dim=0)
    centred = x - mean  # centre before the product: the common mean would swamp float rounding
    return InputMoments(x.shape[0], mean, centred.T @ centred / x.shape[0])


class MomentAccumulator:
    """Count, mean and M2 of every row seen so far, updated batch by batch (O(D^2) memory)."""

    def __init__(self, dim: int, device: torch.device | str = "cpu",
                 gram_dtype: torch.dtype = torch.float64):
        """gram_dtype: the precision of each batch's Gram product, the O(B D^2) part. Merging
        is always in float64; a batch is centred on its own mean first, so float32 products
        lose little (tests/test_api.py bounds what it changes in a closed form)."""
        self.dim = dim
        self.count = 0
        self.gram_dtype = gram_dtype
        self.mean = torch.zeros(dim, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(dim, dim, dtype=torch.float64, device=device)

    def update(self, batch: torch.Tensor) -> MomentAccumulator:
        """Add a [B, D] batch (any float dtype; leading dimensions are flattened)."""
        batch = batch.detach().reshape(-1, batch.shape[-1])
        if batch.shape[-1] != self.dim:
            raise ValueError(f"batch has dimension {batch.shape[-1]}, expected {self.dim}")
        if batch.shape[0] == 0:
            return self
        x = batch.to(device=self.mean.device)
        mean = x.to(torch.float64).mean(dim=0)
        centred = x.to(self.gram_dtype) - mean.to(self.gram_dtype)
        return self._merge(x.shape[0], mean, (centred.T @ centred).to(torch.float64))

    def merge(self, other: MomentAccumulator) -> MomentAccumulator:
        if other.dim != self.dim:
            raise ValueError(f"cannot merge moments of dimension {other.dim} into {self.dim}")
        return self._merge(other.count, other.mean.to(self.mean.device),
                           other.m2.to(self.m2.device))

    def _merge(self, count: int, mean: torch.Tensor, m2: torch.Tensor) -> MomentAccumulator:
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


def all_reduce_moments(local: MomentAccumulator, group=None) -> MomentAccumulator:
    """Combine every process's partial statistics; all processes get the same result.

    Two all-reduces, both of sums: first count and count * mean (the global mean), then each
    process's M2 + n_i (mean_i - mean)(mean_i - mean)^T, whose sum is the global M2. This is
    the pairwise merge for many parts at once; no large sums are subtracted.
    """
    device = local.mean.device
    if dist.get_backend(group) == "nccl" and device.type != "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    head = torch.cat([torch.tensor([float(local.count)], dtype=torch.float64),
                      local.mean.cpu() * local.count]).to(device)
    dist.all_reduce(head, group=group)
    total = int(round(head[0].item()))
    if total == 0:
        raise InputError("no calibration rows on any process")
    mean = head[1:] / total
    delta = local.mean.to(device) - mean
    m2 = local.m2.to(device) + torch.outer(delta, delta) * local.count
    dist.all_reduce(m2, group=group)
    merged = MomentAccumulator(local.dim, device=local.mean.device)
    return merged._merge(total, mean.to(local.mean.device), m2.to(local.mean.device))


def save_moments(path: str | Path, moments: InputMoments, **provenance) -> None:
    """A .pt dict of plain tensors {count, mean, covariance, provenance}."""
    payload = {"count": torch.tensor(moments.count), "mean": moments.mean,
               "covariance": moments.covariance, "provenance": provenance}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_moments(path: str | Path) -> InputMoments:
    """What save_moments wrote, read with weights_only=True and checked."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt file can fail anywhere inside the unpickler
        raise InputError(f"{path}: not a readable moments file ({first_line(err)})") from None
    if not isinstance(obj, dict) or not {"count", "mean", "covariance"} <= set(obj):
        raise InputError(f"{path}: expected a dict with count, mean and covariance")
    return InputMoments(int(obj["count"]), obj["mean"].double(), obj["covariance"].double())


def output_weight(readout: nn.Module, hidden: torch.Tensor, *, probes: int = 4, seed: int = 0,
                  batch_rows: int = 4096) -> torch.Tensor:
    """G = E[J^T J] over the rows h of `hidden` [N, out], J = d readout(h) / dh; float64.

    A readout with one output per row gives each row's J exactly (one backward pass of ones).
    Otherwise G is estimated without labels by Hutchinson's identity E_v[(J^T v)(J^T v)^T] =
    J^T J for Gaussian v: `probes` seeded probes per row. Rows must not interact inside
    `readout` (a per-row head). Only gradients with respect to `hidden` are taken: no
    parameter of `readout` accumulates a gradient.
    """
    if probes < 1:
        raise ValueError(f"probes = {probes}: need at least 1")
    generator = torch.Generator().manual_seed(seed)
    total = torch.zeros(hidden.shape[-1], hidden.shape[-1], dtype=torch.float64)
    rows = hidden.detach().reshape(-1, hidden.shape[-1])
    for start in range(0, rows.shape[0], batch_rows):
        h = rows[start:start + batch_rows].clone().requires_grad_(True)
        with torch.enable_grad(), eval_mode(readout):  # no dropout noise in G
            y = readout(h).reshape(h.shape[0], -1)
            exact = y.shape[1] == 1
            for probe in range(1 if exact else probes):
                v = torch.ones_like(y) if exact else \
                    torch.randn(y.shape, generator=generator, dtype=y.dtype).to(y.device)
                # J^T v as the gradient of <y, v>: the same bits as grad_outputs=v (whose
                # shape check imports sympy, half a second of a quick run)
                (grad,) = torch.autograd.grad((y * v).sum(), h,
                                              retain_graph=probe < probes - 1 and not exact)
                grad = grad.double().cpu()
                total += grad.T @ grad / (1 if exact else probes)
    return total / rows.shape[0]
