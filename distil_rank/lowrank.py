"""LowRankLinear and the closed-form compressors.

A rank-r replacement of y = W x + b (W: [out, in]) is y' = U (V x) + b' with U: [out, r] and
V: [r, in], so r * (in + out) + out parameters instead of in * out + out.

Two closed forms:
  svd         Eckart-Young: the best rank-r W' in Frobenius norm, blind to the data.
  data_aware  the rank-r W' and bias b' that minimise the mean squared output error over the
              calibration inputs x with mean mu and covariance S:
                  E||W x + b - W' x - b'||^2
                      = ||(W - W') S^(1/2)||_F^2 + ||(W - W') mu + b - b'||^2.
              The second term vanishes with b' = b + (W - W') mu. The first is minimised by
              W' = P W, where P projects onto the top-r eigenvectors of the teacher's output
              covariance C = W S W^T; the error left is the sum of C's discarded eigenvalues
              (the reduced-rank regression result, Izenman 1975; equivalently the SVD of W S^(1/2)).
              No inverse of S is needed, so a singular S (N < D) is fine.
  task_aware  the same with the output error weighted by what the rest of a head reads. For a
              layer h = W x + b inside f(h), with J(x) = df/dh, the head's output error is to
              second order E||J (W x + b - W' x - b')||^2. Approximating E[J^T J (.) x x^T] by
              G (x) S with G = E[J^T J] (the Kronecker factorisation of K-FAC, Martens and
              Grosse 2015), the objective is ||G^(1/2) (W - W') S^(1/2)||_F^2 plus the bias term,
              minimised by W' = G^(-1/2) P G^(1/2) W with P the projector on the top-r
              eigenvectors of G^(1/2) W S W^T G^(1/2), and the same bias refit; the weighted
              error left is the sum of its discarded eigenvalues. G is damped, G + lambda
              tr(G) / out I, so that G^(-1/2) exists; with G = I this is data_aware exactly.
              Fisher-weighted SVD (Hsu et al. 2022) weights the rows of W by a diagonal Fisher
              and ignores the inputs; here G is the full output-side matrix, S the full input
              covariance, and the result is the exact minimiser of the factorised objective.
              K-FAC uses the same two factors to precondition gradients, not to compress.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from distil_rank.kernels import two_products
from distil_rank.moments import InputMoments, input_moments


class LowRankLinear(nn.Module):
    """y = up @ (down @ x) + bias: a drop-in replacement for an nn.Linear of rank `rank`.

    `fused`: "off" (the default) keeps the two matrix products. The one-kernel Triton forward
    (distil_rank/kernels/fused.py) is opt-in until a GPU record shows it right and faster:
    "auto" takes it on CUDA where Triton is installed and its tuning measured it faster for
    the shape, "on" wherever it can run. Set it per layer or on the class. Training always
    takes the two products, through autograd."""

    fused = "off"

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 device=None, dtype=None, generator: torch.Generator | None = None,
                 initialise: bool = True):
        super().__init__()
        check_rank(rank, min(in_features, out_features))
        kw = dict(device=device, dtype=dtype)
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Parameter(torch.empty(rank, in_features, **kw))
        self.up = nn.Parameter(torch.empty(out_features, rank, **kw))
        self.bias = nn.Parameter(torch.zeros(out_features, **kw)) if bias else None
        if initialise:  # nn.Linear's default, factor by factor
            nn.init.kaiming_uniform_(self.down, a=5**0.5, generator=generator)
            nn.init.kaiming_uniform_(self.up, a=5**0.5, generator=generator)

    @classmethod
    def from_factors(cls, up: torch.Tensor, down: torch.Tensor, bias: torch.Tensor | None,
                     dtype: torch.dtype = torch.float32) -> LowRankLinear:
        out_features, rank = up.shape
        module = cls(down.shape[1], out_features, rank, bias=bias is not None,
                     device=up.device, dtype=dtype, initialise=False)
        with torch.no_grad():
            module.up.copy_(up)
            module.down.copy_(down)
            if bias is not None:
                module.bias.copy_(bias)
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused != "off" and (x.is_cuda or self.fused == "on"):
            from distil_rank.kernels import fused  # Triton only where it may be used

            if fused.use_fused(self.fused, x, self.down, self.up, self.bias):
                return fused.fused_lowrank(x, self.down, self.up, self.bias)
        return self.two_products(x)

    def two_products(self, x: torch.Tensor) -> torch.Tensor:
        """`two_products` with this layer's factors, whatever `fused` says: the reference path,
        which training and fidelity measurements take."""
        return two_products(x, self.down, self.up, self.bias)

    def dense_weight(self) -> torch.Tensor:
        return self.up @ self.down

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.rank}, bias={self.bias is not None}")


def empty_linear(in_features: int, out_features: int) -> nn.Linear:
    """An nn.Linear on the CPU with uninitialised weights: nothing drawn from the global random
    state. (Built on the meta device, then given real storage: `Module.to_empty` would import
    sympy, half a second of a quick run.)"""
    layer = nn.Linear(in_features, out_features, device="meta")
    layer.weight = nn.Parameter(torch.empty(out_features, in_features))
    layer.bias = nn.Parameter(torch.empty(out_features))
    return layer


def seeded_linear(in_features: int, out_features: int, generator: torch.Generator) -> nn.Linear:
    """An nn.Linear with PyTorch's default initialisation drawn from `generator`, not from the
    global random state (with the same seed, the same values as torch.manual_seed + nn.Linear)."""
    layer = empty_linear(in_features, out_features)
    nn.init.kaiming_uniform_(layer.weight, a=5**0.5, generator=generator)
    bound = 1 / math.sqrt(in_features)
    nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
    return layer


def check_rank(rank, limit: int, what: str = "rank") -> int:
    """`rank` if it is an integer in 1..limit, else a ValueError that says so."""
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral):
        raise ValueError(f"{what} {rank!r} is not an integer")
    if not 1 <= rank <= limit:
        raise ValueError(f"{what} {rank} outside 1..{limit}")
    return int(rank)


def num_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def lowrank_parameters(in_features: int, out_features: int, rank: int, bias: bool = True) -> int:
    return rank * (in_features + out_features) + (out_features if bias else 0)


def largest_saving_rank(in_features: int, out_features: int, dense_parameters: int,
                        bias: int = 0) -> int:
    """The largest rank whose factors, with `bias` parameters beside them, hold fewer than
    `dense_parameters`: r (in + out) + bias < dense_parameters."""
    return (dense_parameters - bias - 1) // (in_features + out_features)


def flop_ratio(in_features: int, out_features: int, rank: int) -> float:
    """Multiply-adds of the dense layer over those of the factorised one, which is also the
    ratio of their weights, biases aside."""
    return in_features * out_features / lowrank_parameters(in_features, out_features, rank, False)


def explained_variance_curve(errors: torch.Tensor) -> list[float]:
    """Explained variance 1 - error[r] / error[0] from an error curve (entry 0: keep nothing);
    an output that does not vary is fully explained at every rank."""
    if errors[0] <= 0:
        return [1.0] * len(errors)
    return (1 - errors / errors[0]).tolist()


def smallest_rank_reaching(explained: list[float], targets=(0.95, 0.99, 0.999)) -> dict:
    """explained[r] is the explained variance at rank r (r = 0..D); the smallest r reaching each
    target, or None when none does."""
    found = {}
    for target in targets:
        rank = next((r for r, ev in enumerate(explained) if ev >= target), None)
        found[str(target)] = rank
    return found


def _balanced(left: torch.Tensor, singular: torch.Tensor, right_t: torch.Tensor):
    """Split U diag(s) V^T into up = U sqrt(s), down = sqrt(s) V^T: equal scales help the
    optimiser when distillation starts from these factors."""
    root = singular.clamp_min(0).sqrt()
    return left * root, root[:, None] * right_t


def _check_weight_rank(weight: torch.Tensor, rank: int) -> None:
    check_rank(rank, min(weight.shape), f"rank for a weight of shape {tuple(weight.shape)}:")


# ----------------------------------------------------------------------------- data-free


def full_svd(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The thin SVD (u, s, vh) of `weight` in float64: every rank's truncation reads it."""
    return torch.linalg.svd(weight.detach().double(), full_matrices=False)


def svd_factors(weight: torch.Tensor, rank: int, decomposition=None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Eckart-Young truncation of `weight`, as balanced factors (up, down), in float64;
    `decomposition`: its full_svd, when already computed."""
    _check_weight_rank(weight, rank)
    u, s, vh = decomposition or full_svd(weight)
    return _balanced(u[:, :rank], s[:rank], vh[:rank])


def compress_svd(linear: nn.Linear, rank: int, decomposition=None) -> LowRankLinear:
    """Truncated SVD W_r of the weight, the bias unchanged (the published baseline)."""
    up, down = svd_factors(linear.weight, rank, decomposition)
    bias = None if linear.bias is None else linear.bias.detach()
    return LowRankLinear.from_factors(up, down, bias, dtype=linear.weight.dtype)


def compress_svd_bias(linear: nn.Linear, rank: int, mean: torch.Tensor,
                      decomposition=None) -> LowRankLinear:
    """Truncated SVD with the truncation's shift of the mean output folded into the bias:
    b' = b + (W - W_r) mu, mu the calibration inputs' mean. The factors are SVD's, data-free;
    only the bias reads the data, through its mean. Then the compressed layer's mean output on
    the calibration rows is the teacher's exactly, and its error is SVD's minus the squared
    offset ||(W - W_r) mu||^2 per row: on embeddings with a large common mean (as ESM-2's),
    most of SVD's loss."""
    up, down = svd_factors(linear.weight, rank, decomposition)
    mu = mean.detach().double().reshape(-1).to(up.device)
    if mu.numel() != linear.in_features:
        raise ValueError(f"mean of dimension {mu.numel()}, the layer takes "
                         f"{linear.in_features} features")
    shift = linear.weight.detach().double() @ mu - up @ (down @ mu)
    bias = shift if linear.bias is None else linear.bias.detach().double() + shift
    return LowRankLinear.from_factors(up, down, bias, dtype=linear.weight.dtype)


# ----------------------------------------------------------------------------- data-aware


DEFAULT_DAMPING = 1e-3  # of tr(G) / out: the result is the exact minimiser for a well-posed G


def damped_output_weight(output_weight: torch.Tensor, damping: float = DEFAULT_DAMPING):
    """G_d = G + damping * tr(G) / out * I, float64 and exactly symmetric, after the checks
    that G is a finite square weight with a positive trace."""
    g = output_weight.detach().double()
    if g.dim() != 2 or g.shape[0] != g.shape[1]:
        raise ValueError(f"output_weight has shape {tuple(g.shape)}, expected square [out, out]")
    if not bool(torch.isfinite(g).all()):
        raise ValueError("output_weight holds NaN or Inf")
    g = (g + g.T) / 2
    scale = g.trace() / g.shape[0]
    if not scale > 0:
        raise ValueError("output_weight has a trace of zero or less: not a positive "
                         "semi-definite weight")
    return g + damping * scale * torch.eye(len(g), dtype=g.dtype, device=g.device)


def _not_positive_definite(damping: float, smallest: float) -> ValueError:
    return ValueError(f"output_weight plus damping {damping} is not positive definite "
                      f"(smallest eigenvalue {smallest:.3g}): is it PSD?")


def output_weight_roots(output_weight: torch.Tensor, damping: float = DEFAULT_DAMPING):
    """(G_d^(1/2), G_d^(-1/2)) of the damped G_d = G + damping * tr(G) / out * I, float64."""
    values, vectors = torch.linalg.eigh(damped_output_weight(output_weight, damping))
    if values[0] <= 0:
        raise _not_positive_definite(damping, values[0].item())
    return (vectors * values.sqrt()) @ vectors.T, (vectors * values.rsqrt()) @ vectors.T


def output_eigenvalues(weight: torch.Tensor, moments: InputMoments,
                       output_weight: torch.Tensor | None = None,
                       damping: float = DEFAULT_DAMPING) -> torch.Tensor:
    """The eigenvalues of output_spectrum, largest first, without its eigenvectors or G's
    roots: all that an error curve needs. With G_d = L L^T (Cholesky), L^T W S W^T L has the
    eigenvalues of R W S W^T R for R = G_d^(1/2): both are those of W S W^T G_d."""
    w = weight.detach().double().to(moments.covariance.device)
    if output_weight is not None:
        damped = damped_output_weight(output_weight, damping)
        factor, info = torch.linalg.cholesky_ex(damped)
        if info.item() != 0:
            raise _not_positive_definite(damping, torch.linalg.eigvalsh(damped)[0].item())
        w = factor.T.to(w.device) @ w
    out_cov = w @ moments.covariance @ w.T
    return torch.linalg.eigvalsh((out_cov + out_cov.T) / 2).flip(0).clamp_min(0)


def output_spectrum(weight: torch.Tensor, moments: InputMoments,
                    output_root: torch.Tensor | None = None):
    """Eigen-decomposition of the teacher's (weighted) output covariance, largest first:
    W S W^T, or R W S W^T R with R = G^(1/2)."""
    w = weight.detach().double().to(moments.covariance.device)
    if output_root is not None:
        w = output_root.to(w.device) @ w
    out_cov = w @ moments.covariance @ w.T
    out_cov = (out_cov + out_cov.T) / 2  # exact symmetry for eigh
    eigenvalues, eigenvectors = torch.linalg.eigh(out_cov)
    return eigenvalues.flip(0).clamp_min(0), eigenvectors.flip(1)


def data_aware_error_curve(weight: torch.Tensor, moments: InputMoments,
                           output_weight: torch.Tensor | None = None,
                           damping: float = DEFAULT_DAMPING, spectrum=None) -> torch.Tensor:
    """The exact minimum mean squared output error (summed over outputs, per row; G-weighted
    when G is given) of every rank 0..out at once: entry r is the sum of the discarded
    eigenvalues beyond r. `spectrum`: the matching output_spectrum, when already computed."""
    eigenvalues = output_eigenvalues(weight, moments, output_weight, damping) \
        if spectrum is None else spectrum[0]
    tail = eigenvalues.flip(0).cumsum(0).flip(0)
    return torch.cat([tail, tail.new_zeros(1)])


def data_aware_factors(weight: torch.Tensor, bias: torch.Tensor | None, moments: InputMoments,
                       rank: int, output_weight: torch.Tensor | None = None,
                       damping: float = DEFAULT_DAMPING, spectrum=None, roots=None):
    """The closed-form rank-r optimum (G-weighted when G is given): (up, down, new_bias),
    float64. `spectrum` and `roots`: the matching output_spectrum and output_weight_roots,
    when already computed (neither depends on the rank)."""
    _check_weight_rank(weight, rank)
    w = weight.detach().double().to(moments.covariance.device)
    root = inverse_root = None
    if output_weight is not None:
        roots = roots or output_weight_roots(output_weight, damping)
        root, inverse_root = (m.to(w.device) for m in roots)
    _, eigenvectors = spectrum or output_spectrum(w, moments, root)
    basis = eigenvectors[:, :rank]  # top-r (weighted) output directions, orthonormal
    core = basis.T @ (w if root is None else root @ w)  # [r, in]
    if inverse_root is not None:
        basis = inverse_root @ basis  # W' = G^(-1/2) basis basis^T G^(1/2) W
    # Re-balance basis @ core into sqrt(s)-scaled factors (an exact refactorisation).
    p, s, qh = torch.linalg.svd(core, full_matrices=False)
    up, down = _balanced(basis @ p, s, qh)
    b = torch.zeros(w.shape[0], dtype=torch.float64, device=w.device) if bias is None \
        else bias.detach().double().to(w.device)
    new_bias = b + (w - up @ down) @ moments.mean
    return up, down, new_bias


def compress_data_aware(linear: nn.Linear, calibration: torch.Tensor | InputMoments,
                        rank: int, output_weight: torch.Tensor | None = None,
                        damping: float = DEFAULT_DAMPING, spectrum=None,
                        roots=None) -> LowRankLinear:
    """The rank-r LowRankLinear with the least mean squared output error on `calibration`, or
    with `output_weight` G the least G-weighted error (task_aware). The result always has a
    bias (the refit needs one), even if `linear` has none."""
    moments = calibration if isinstance(calibration, InputMoments) else input_moments(calibration)
    up, down, bias = data_aware_factors(linear.weight, linear.bias, moments, rank, output_weight,
                                        damping, spectrum, roots)
    device = linear.weight.device
    return LowRankLinear.from_factors(up.to(device), down.to(device), bias.to(device),
                                      dtype=linear.weight.dtype)
