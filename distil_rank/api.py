"""Compress the linear layers of your own model with the closed form the benchmark shows best:
`compress_linear` for one layer, `compress_model` for a model's chosen layers (to a rank, a
rank per layer or a target explained variance), `save_compressed` and `load_compressed` for
the result. docs/api.md shows each in use.

Calibration inputs are what the layer sees: for compress_linear a tensor [N, in] or an iterable
of such batches (any leading dimensions are flattened); for compress_model, batches of *model*
inputs, and forward hooks record what reaches each chosen layer. Statistics are accumulated in
float64 in one pass (memory O(in^2 + out^2) per layer, not O(N)).

Objectives. "layer" (the default to a rank or a target) minimises each layer's own mean squared
output error: the data_aware closed form. "output" minimises, to second order, the error of the
*model's* output (or of output_fn(model output), e.g. a pooled embedding): each layer's error is
weighted by
G = E[J^T J], J the Jacobian of that output with respect to the layer's output, estimated without
labels from Gaussian probes backpropagated through the model (Hutchinson), and the task_aware
closed form of distil_rank.lowrank is applied (K-FAC's Kronecker factorisation G (x) S); it is
the default to a budget. With target_explained_variance, the explained variance is then the
G-weighted one.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from distil_rank.allocate import allocate_ranks
from distil_rank.distill import (
    HOLDOUT_FRACTION,
    RECIPE,
    DistillSettings,
    distill_together,
    refinement_job,
)
from distil_rank.embeddings import split_indices
from distil_rank.errors import first_line
from distil_rank.lowrank import (
    DEFAULT_DAMPING,
    LowRankLinear,
    check_rank,
    compress_data_aware,
    compress_svd,
    compress_svd_bias,
    data_aware_error_curve,
    explained_variance_curve,
    largest_saving_rank,
    lowrank_parameters,
    output_spectrum,
    output_weight_roots,
    smallest_rank_reaching,
)
from distil_rank.moments import InputMoments, MomentAccumulator, moments_of
from distil_rank.runtime import eval_mode


def rank_for_target(linear: nn.Linear, moments: InputMoments, target: float,
                    output_weight: torch.Tensor | None = None,
                    damping: float = DEFAULT_DAMPING, spectrum=None) -> int:
    """The smallest rank whose closed form explains `target` of the layer's output variance on
    the calibration inputs (G-weighted when G is given; 1 when the output does not vary).
    `spectrum`: the matching output_spectrum, when already computed."""
    if not 0 < target <= 1:
        raise ValueError(f"target explained variance {target} must be in (0, 1]")
    curve = explained_variance_curve(data_aware_error_curve(linear.weight, moments,
                                                            output_weight, damping, spectrum))
    rank = smallest_rank_reaching(curve, (target,))[str(target)]
    full = min(linear.in_features, linear.out_features)
    return max(1, min(full, rank if rank is not None else full))


def _choose_rank(linear, moments, rank, target, output_weight=None, damping=DEFAULT_DAMPING,
                 what: str = "layer", spectrum=None):
    if (rank is None) == (target is None):
        raise ValueError(f"{what}: give exactly one of rank, target_explained_variance and "
                         "(for a model) budget")
    if rank is not None:
        return check_rank(rank, min(linear.in_features, linear.out_features), f"{what}: rank")
    return rank_for_target(linear, moments, target, output_weight, damping, spectrum)


def _describe(linear: nn.Linear) -> str:
    return f"{type(linear).__name__}({linear.in_features} -> {linear.out_features})"


def _checked_moments(linear: nn.Linear, calibration, what: str) -> InputMoments:
    """The calibration's moments, refusing rows of the wrong width, non-tensor batches and
    NaN or Inf (each a ValueError naming the layer)."""
    if isinstance(calibration, InputMoments):
        moments = calibration
    else:
        accumulator = MomentAccumulator(linear.in_features)
        for batch in [calibration] if isinstance(calibration, torch.Tensor) else calibration:
            if not isinstance(batch, torch.Tensor):
                raise ValueError(f"{what}: a calibration batch is a {type(batch).__name__}, "
                                 "expected a tensor")
            if batch.dim() == 0 or batch.shape[-1] != linear.in_features:
                raise ValueError(f"{what}: calibration rows of shape {tuple(batch.shape)}, the "
                                 f"layer takes {linear.in_features} features")
            accumulator.update(batch)
        if accumulator.count == 0:
            raise ValueError(f"{what}: no calibration rows")
        moments = accumulator.moments()
    if moments.mean.numel() != linear.in_features:
        raise ValueError(f"{what}: moments of dimension {moments.mean.numel()}, the layer takes "
                         f"{linear.in_features} features")
    if not (torch.isfinite(moments.mean).all() and torch.isfinite(moments.covariance).all()):
        raise ValueError(f"{what}: calibration data holds NaN or Inf")
    return moments


def compress_linear(linear: nn.Linear, calibration, *, rank: int | None = None,
                    target_explained_variance: float | None = None,
                    output_weight: torch.Tensor | None = None, damping: float = DEFAULT_DAMPING,
                    refine_steps: int = 0, refine_settings: DistillSettings = RECIPE,
                    holdout_fraction: float = HOLDOUT_FRACTION, seed: int = 0,
                    method: str = "data_aware") -> LowRankLinear:
    """A drop-in low-rank replacement of `linear`, by the closed form (the least mean squared
    output error on the calibration inputs), optionally refined by distillation.

    method: "data_aware" (the closed form), or a baseline at a given rank: "svd_bias" (truncated
    SVD with the calibration mean's shift folded into the bias; of the data only its mean) or
    "svd" (data-free; the calibration is not read).

    output_weight: a PSD [out, out] tensor G that weights the output error, e.g. E[J^T J] of
    what reads this layer (distil_rank.moments.output_weight computes it for a head); None is
    the identity. G is damped by `damping` * tr(G) / out, so for a well-conditioned G the result
    is the exact minimiser of the G-weighted error.

    With refine_steps > 0 the calibration rows are split (seeded, `holdout_fraction` held out)
    and the benchmark's distil_da recipe runs (distill.refinement_job): the closed form fitted
    and distilled on one part, `refine_steps` steps of `refine_settings` (the published recipe
    by default), keeping the checkpoint with the least error on the other part, the closed form
    itself included, so refinement never makes the held-out error worse. Refinement needs the
    rows in memory (an iterable is concatenated) and distils the layer's own output, so it does
    not combine with output_weight.
    """
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"compress_linear takes an nn.Linear, got {type(linear).__name__}")
    # the options compress_model shares, checked as compress_model checks them
    CompressionConfig(rank=rank, target_explained_variance=target_explained_variance,
                      damping=damping, seed=seed, method=method)
    what = _describe(linear)
    if not all(torch.isfinite(p).all() for p in linear.parameters()):
        raise ValueError(f"{what}: its weight or bias holds NaN or Inf")
    if method != "data_aware":
        _check_baseline(method, target_explained_variance, output_weight, refine_steps > 0)
        full = min(linear.in_features, linear.out_features)
        chosen = check_rank(rank, full, f"{what}: rank")
        student = compress_svd(linear, chosen) if method == "svd" else compress_svd_bias(
            linear, chosen, _checked_moments(linear, calibration, what).mean)
    elif refine_steps <= 0:
        moments = _checked_moments(linear, calibration, what)
        chosen = _choose_rank(linear, moments, rank, target_explained_variance, output_weight,
                              damping, what)
        student = compress_data_aware(linear, moments, chosen, output_weight, damping)
    else:
        fit, holdout = _refinement_rows(linear, calibration, output_weight, refine_settings,
                                        holdout_fraction, seed, what)
        moments = moments_of(fit)
        chosen = _choose_rank(linear, moments, rank, target_explained_variance, what=what)
        job = refinement_job(linear, compress_data_aware(linear, moments, chosen), fit, holdout,
                             seed=seed, settings=replace(refine_settings, steps=refine_steps))
        student = distill_together([job], linear.weight.device, desc="refine")[0].student
    return _warn_if_larger(linear, student, what)


def _warn_if_larger(linear: nn.Linear, student: LowRankLinear, what: str) -> LowRankLinear:
    """The student, with a warning where its factors hold as many parameters as the layer or
    more (a rank above about half its smaller side): compress_model keeps such a layer dense."""
    before, after = (sum(p.numel() for p in m.parameters()) for m in (linear, student))
    if after >= before:
        saving = largest_saving_rank(linear.in_features, linear.out_features, before,
                                     linear.out_features if student.bias is not None else 0)
        warnings.warn(f"{what}: rank {student.rank} holds {after:,} parameters against the "
                      f"layer's {before:,}; the factors save weights only up to rank {saving} "
                      "(keep the dense layer, or ask for a lower rank or target)", stacklevel=3)
    return student


METHODS = ("data_aware", "svd_bias", "svd")


def _check_baseline(method: str, target, output_weight, refine: bool, budget=None,
                    objective: str = "layer") -> None:
    """The SVD baselines take a rank and nothing that needs the closed form's error curve."""
    if method not in METHODS:
        raise ValueError(f"method {method!r}: expected one of {', '.join(METHODS)}")
    if method == "data_aware":
        return
    given = [name for name, value in (("target_explained_variance", target),
                                      ("budget", budget), ("output_weight", output_weight),
                                      ("refine_steps", refine or None)) if value is not None]
    if given or objective != "layer":
        raise ValueError(f"method {method!r} takes a rank and the layer objective; "
                         f"{', '.join(given) or 'objective=' + repr(objective)} needs "
                         "data_aware's closed form")


def _refinement_rows(linear: nn.Linear, calibration, output_weight, settings: DistillSettings,
                     holdout_fraction: float, seed: int, what: str):
    """The calibration rows refinement fits on and chooses with, after every check."""
    if settings.batch_size < 1:
        raise ValueError(f"refine_settings.batch_size = {settings.batch_size}: must be at least 1")
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"holdout_fraction = {holdout_fraction}: must be between 0 and 1 "
                         "(exclusive): refinement needs rows to fit on and rows to choose with")
    if output_weight is not None:
        raise ValueError("refinement distils the layer's own output: it does not combine with "
                         "output_weight (use the closed form alone)")
    if isinstance(calibration, InputMoments):
        raise ValueError("refinement distils on rows: pass the calibration rows, not moments")
    batches = [calibration] if isinstance(calibration, torch.Tensor) else list(calibration)
    _checked_moments(linear, batches, what)
    x = torch.cat([b.reshape(-1, linear.in_features) for b in batches])
    x = x.to(linear.weight.device, linear.weight.dtype)
    fit_rows, held_rows = split_indices(x.shape[0], holdout_fraction, seed)
    return x[fit_rows.to(x.device)], x[held_rows.to(x.device)]


# ----------------------------------------------------------------------------- whole models


@dataclass
class LayerReport:
    name: str
    in_features: int
    out_features: int
    rank: int | None  # None: kept dense, the better use of a budget
    params_before: int
    params_after: int
    calibration_rows: int
    explained_variance_calibration: float  # of the objective's error on the calibration rows:
    # G-weighted for the "output" objective, so not comparable with the holdout figure
    explained_variance_holdout: float | None  # the layer's own, unweighted output on the
    # holdout rows; None without holdout, or where that output does not vary (one row): warned
    objective: str = "layer"  # "layer" (data_aware) or "output" (task_aware, G from probes)

    @property
    def params_saved(self) -> int:
        return self.params_before - self.params_after


# nn.Linear layers that their PyTorch parent reads through `.weight` instead of calling them:
# MultiheadAttention's output projection, and TransformerEncoderLayer's feed-forward on its fast
# path (taken in eval mode, gradients on or off). A LowRankLinear has no dense weight to read.
READ_BY_PARENT = {nn.MultiheadAttention: ("out_proj",),
                  nn.TransformerEncoderLayer: ("linear1", "linear2")}


def read_by_parent(model: nn.Module) -> list[str]:
    """The names of the model's nn.Linear layers that READ_BY_PARENT keeps dense."""
    return [f"{name}.{child}" if name else child for name, module in model.named_modules()
            for kind, children in READ_BY_PARENT.items() if isinstance(module, kind)
            for child in children if isinstance(getattr(module, child, None), nn.Linear)]


def _select(model: nn.Module, layers) -> dict[str, nn.Linear]:
    """The chosen nn.Linear layers by name: at least one, each one of the model's. The layers
    their parent reads by weight (read_by_parent) are refused by name and, when every layer or
    a predicate's is asked for, left dense with a warning."""
    kept = read_by_parent(model)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    if isinstance(layers, str) or not (layers is None or callable(layers)
                                       or isinstance(layers, Iterable)):
        raise TypeError(f"layers: a list of layer names or a predicate (name, module) -> bool, "
                        f"got {layers!r}" + (f" (one layer: [{layers!r}])"
                                             if isinstance(layers, str) else ""))
    if layers is None:
        chosen = linears
    elif callable(layers):
        chosen = {n: m for n, m in linears.items() if layers(n, m)}
    else:
        names = list(layers)  # a generator of names can be read only once
        if missing := [n for n in names if n not in linears]:
            raise ValueError(f"not nn.Linear layers of the model: {missing}; "
                             f"the model's are: {sorted(linears)}")
        if refused := [n for n in names if n in kept]:
            raise ValueError(f"layers {refused}: {_KEPT_WHY}")
        chosen = {n: linears[n] for n in names}
    if left := [n for n in chosen if n in kept]:
        warnings.warn(f"compress_model leaves {len(left)} layer(s) dense ({', '.join(left)}): "
                      f"{_KEPT_WHY}", stacklevel=4)
        chosen = {n: m for n, m in chosen.items() if n not in kept}
    if not chosen:
        raise ValueError("no nn.Linear layer selected" + (f" (left dense: {_KEPT_WHY})"
                                                          if left else ""))
    return chosen


_KEPT_WHY = ("PyTorch's nn.MultiheadAttention and nn.TransformerEncoderLayer read these "
             "through their .weight, without calling them, and a low-rank layer has no dense "
             "weight")


def _forward(model: nn.Module, batch, call: Callable | None):
    if call is not None:
        return call(model, batch)
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (list, tuple)):
        return model(*batch)
    return model(batch)


@dataclass
class _Probes:
    """Gaussian probes of the model's output, backpropagated to the chosen layers' outputs."""

    output_fn: Callable | None
    probes: int
    generator: torch.Generator

    def backpropagate(self, output, taps: dict[str, list[torch.Tensor]], mask, on_grad) -> None:
        """on_grad(name, J^T v) for each probe v of the output and each tapped layer output,
        J that output's Jacobian; padding positions of the output (`mask`) are not probed."""
        y = output_tensor(output) if self.output_fn is None else self.output_fn(output)
        if not isinstance(y, torch.Tensor):
            raise ValueError(f"the model's output is a {type(y).__name__}: pass output_fn "
                             "to pick the tensor whose error matters")
        keep = None
        if self.output_fn is None and mask is not None and y.shape[:2] == mask.shape:
            keep = mask.to(y.device, y.dtype).reshape(*mask.shape, *[1] * (y.dim() - 2))
        names = [n for n, tensors in taps.items() for _ in tensors]
        tensors = [t for tensors in taps.values() for t in tensors]
        for k in range(self.probes):
            v = torch.randn(y.shape, generator=self.generator, dtype=y.dtype).to(y.device)
            v = v if keep is None else v * keep
            grads = torch.autograd.grad(y, tensors, grad_outputs=v, allow_unused=True,
                                        retain_graph=k < self.probes - 1)
            for name, grad in zip(names, grads):
                if grad is not None:
                    on_grad(name, grad)


def _record(model, targets: dict[str, nn.Module], batches, call, on_input, probes=None,
            on_grad=None, skip_padding: bool = True, desc: str = "calibrating") -> None:
    """Run the model over `batches`; call on_input(name, input rows) at every target layer.
    With `probes`, also call on_grad(name, rows of J^T v) for each Gaussian probe v of the
    output, J the Jacobian of the output with respect to that layer's output. Gradients are
    taken with respect to the layers' outputs only: no parameter's .grad or requires_grad flag
    is touched. With skip_padding, a dict batch's `attention_mask` [batch, tokens] selects the
    rows of every layer whose input is [batch, tokens, features]: padding positions are not
    calibration data."""
    taps: dict[str, list[torch.Tensor]] = {}
    mask: torch.Tensor | None = None  # the current batch's, while it runs

    def rows(x: torch.Tensor) -> torch.Tensor:
        if mask is not None and x.shape[:-1] == mask.shape:
            return x[mask.to(x.device)]
        return x.reshape(-1, x.shape[-1])

    def input_hook(name):
        def hook(module, args):
            on_input(name, rows(args[0]))
        return hook  # returning None leaves the layer's input unchanged

    def output_hook(name):
        def hook(module, args, output):
            # adding a zero that requires grad puts the output in the graph even when nothing
            # upstream requires grad, and lets the gradient through to earlier layers
            tapped = output + output.new_zeros(()).requires_grad_()
            taps.setdefault(name, []).append(tapped)
            return tapped
        return hook

    handles = [m.register_forward_pre_hook(input_hook(n)) for n, m in targets.items()]
    if probes is not None:
        handles += [m.register_forward_hook(output_hook(n)) for n, m in targets.items()]
    try:
        for i, batch in enumerate(tqdm(batches, desc=desc, leave=False, disable=None)):
            taps.clear()
            mask = torch.as_tensor(batch["attention_mask"]).bool() if skip_padding and \
                isinstance(batch, dict) and "attention_mask" in batch else None
            try:
                with torch.set_grad_enabled(probes is not None):
                    output = _forward(model, batch, call)
            except (RuntimeError, TypeError, ValueError) as err:  # a batch of the wrong kind
                raise ValueError(f"{desc}, batch {i}: {first_line(err)}; the model is "
                                 "unchanged") from None
            if probes is not None:
                probes.backpropagate(output, taps, mask, lambda n, grad: on_grad(n, rows(grad)))
    finally:
        for handle in handles:
            handle.remove()


def output_tensor(output):
    """The tensor whose error the output objective weighs when no output_fn is given: the
    output itself, or the first tensor of a tuple, list, dict or ModelOutput (a Hugging Face
    model's last_hidden_state); the output unchanged when it holds none."""
    if isinstance(output, torch.Tensor):
        return output
    values = output.values() if isinstance(output, dict) else \
        output if isinstance(output, (tuple, list)) else ()
    return next((v for v in values if isinstance(v, torch.Tensor)), output)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """`module` in place of the one at `name`, under every name the model reaches that one by
    (a module registered twice stays one module)."""
    old = model.get_submodule(name)
    module.train(old.training)
    for alias, found in model.named_modules(remove_duplicate=False):
        if found is old:
            parent_name, _, child = alias.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


@dataclass(frozen=True)
class CompressionConfig:
    """How compress_model compresses a model, every option checked once, here, before any model
    is touched. Build it and pass it, or pass its fields as keyword arguments to compress_model,
    which builds it: compress_model(model, batches, budget=0.5) is
    compress_model(model, batches, CompressionConfig(budget=0.5)).

    layers: None (every nn.Linear, or the keys of a rank dict), a list of module names, or a
    predicate (name, module) -> bool; the layers PyTorch's own attention and encoder layers read
    by weight stay dense (read_by_parent). Give one of: rank, one rank for every layer or {layer
    name: rank} (so that objectives can be compared at equal size); target_explained_variance,
    the smallest rank per layer that reaches it; or budget, the fraction in (0, 1] of the
    selected layers' weights (biases aside) to keep, with ranks allocated exactly across the
    layers to minimise their summed error (distil_rank.allocate: each layer's unexplained
    fraction of its output variance for the "layer" objective, its G-weighted error, in units of
    the model's output, for "output"); a layer is kept dense where that is the better use of
    the budget, and then counts in full.
    objective: "layer" (each layer's own output error) or "output" (the error of the model's
    output, or of output_fn(model output), weighted per layer by G = E[J^T J] from `probes`
    seeded Gaussian probes per batch; no labels needed). A probe costs a backward pass and a
    Gram product per layer; docs/api.md measures what more than the default one buys. None (the
    default): "output" with a budget, whose allocation must compare layers in one unit (the
    layer objective's relative errors lost to uniform ranks on a real model: docs/api.md), and
    "layer" otherwise. A budget allocated by the "layer" objective warns that it may lose to
    uniform ranks. Without output_fn, the model's output is the tensor it returns, or the
    first tensor of a tuple, dict or Hugging Face ModelOutput (its last_hidden_state); with a
    dict batch's attention_mask, probes of a [batch, tokens, ...] output leave padding out.
    probes, seed: the probes per batch, and their generator's seed.
    A layer whose chosen rank would not save at least `min_params_saved` parameters is left dense
    and not reported. skip_padding: a dict batch's `attention_mask` (as a Hugging Face tokenizer
    returns it) keeps padding positions out of every layer's statistics; False counts every
    token. Each batch's Gram product is computed in `gram_dtype` (default: float32, or float64
    for a float64 layer) and merged in float64. damping: the ridge added to G (relative to its
    mean eigenvalue) before its roots are taken. method: "data_aware" (the closed forms above),
    or at a given rank the baselines "svd_bias" (SVD with each layer's input mean folded into
    its bias) and "svd".
    """

    layers: object = None
    rank: int | dict[str, int] | None = None
    target_explained_variance: float | None = None
    budget: float | None = None
    objective: str | None = None  # None: "output" with a budget, "layer" otherwise
    output_fn: Callable | None = None
    probes: int = 1
    seed: int = 0
    damping: float = DEFAULT_DAMPING
    min_params_saved: int = 1
    skip_padding: bool = True
    gram_dtype: torch.dtype | None = None
    method: str = "data_aware"

    def __post_init__(self):
        if self.objective is None:
            object.__setattr__(self, "objective", "output" if self.budget is not None
                               else "layer")
        if self.objective not in ("layer", "output"):
            raise ValueError(f"objective {self.objective!r}: expected 'layer' or 'output'")
        given = [v is not None for v in (self.rank, self.target_explained_variance,
                                         self.budget)]
        if sum(given) > 1:
            raise ValueError("give exactly one of rank, target_explained_variance and budget")
        budget = self.budget
        if budget is not None and (isinstance(budget, bool) or not isinstance(
                budget, (int, float)) or not 0 < budget <= 1):
            raise ValueError(f"budget {budget!r}: expected a fraction of the weights in (0, 1]")
        for name in ("probes", "min_params_saved"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0 or \
                    (name == "probes" and value < 1):
                raise ValueError(f"{name} {value!r}: expected a whole number, at least "
                                 f"{1 if name == 'probes' else 0}")
        if not isinstance(self.damping, (int, float)) or not self.damping >= 0:
            raise ValueError(f"damping {self.damping!r}: expected a number >= 0")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or \
                not 0 <= self.seed < 2**63:
            raise ValueError(f"seed {self.seed!r}: expected a whole number in [0, 2**63)")
        if self.gram_dtype is not None and not (isinstance(self.gram_dtype, torch.dtype)
                                                and self.gram_dtype.is_floating_point):
            raise TypeError(f"gram_dtype {self.gram_dtype!r}: expected a floating torch.dtype "
                            "(torch.float32 or torch.float64) or None")
        if self.output_fn is not None and not callable(self.output_fn):
            raise TypeError(f"output_fn {self.output_fn!r}: expected a function of the model's "
                            "output, or None")
        _check_baseline(self.method, self.target_explained_variance, None, False, budget,
                        self.objective)


def compress_model(model: nn.Module, calibration: Iterable,
                   config: CompressionConfig | None = None, *, holdout: Iterable | None = None,
                   call: Callable | None = None, **options) -> list[LayerReport]:
    """Replace the chosen nn.Linear layers of `model`, in place, by closed-form low-rank ones.
    How: `config` (a CompressionConfig, whose docstring describes every option), or its fields
    as keyword `options` (beside a config, they replace its fields).

    calibration / holdout: iterables of model inputs (a tensor, a tuple of positional arguments
    or a dict of keyword arguments per batch; a lone tensor or dict is one batch, as for
    compress_linear), or `call(model, batch)`, which runs one batch and returns its output.
    Every layer's statistics are recorded from the original model in one pass, in eval mode
    (dropout off, as the model will run); the model comes back unchanged apart from the
    replaced layers, each module in the mode it had. Returns one LayerReport per replaced layer
    (and, with a budget, per layer kept dense); explained variance is measured on the holdout
    batches when given.
    """
    if config is not None and not isinstance(config, CompressionConfig):
        raise TypeError(f"config: expected a CompressionConfig, got a {type(config).__name__} "
                        "(options go as keywords: compress_model(model, data, rank=8))")
    config = replace(config, **options) if config is not None else CompressionConfig(**options)
    _check_module(model, "compress_model")
    calibration, holdout = _as_batches(calibration), _as_batches(holdout)
    targets = _targets(model, config.layers, config.rank)
    if config.budget is not None and config.objective == "layer":
        warnings.warn("compress_model: a budget allocated by objective='layer' weighs each "
                      "layer's relative error, blind to its effect on the model's output; on "
                      "all-MiniLM-L6-v2 it kept less than uniform ranks at every budget "
                      "(docs/api.md). Leave objective unset for the output objective.",
                      UserWarning, stacklevel=2)
    gram = {n: config.gram_dtype or (torch.float64 if m.weight.dtype == torch.float64
                                     else torch.float32) for n, m in targets.items()}
    prober = None if config.objective == "layer" else \
        _Probes(config.output_fn, config.probes, torch.Generator().manual_seed(config.seed))
    with eval_mode(model):  # as it will run: no dropout noise in the statistics
        statistics = _layer_statistics(model, targets, calibration, call, prober, gram,
                                       config.skip_padding)
        fitted = _fit_layers(targets, statistics, config)
        replaced = {n: (targets[n], student, report) for n, (student, report) in fitted.items()
                    if student is not None and (config.budget is not None
                                                or report.params_saved >= config.min_params_saved)}
        if holdout is not None and replaced:
            _measure_holdout(model, replaced, holdout, call, gram, config.skip_padding)
    for name, (_, student, _) in replaced.items():
        _set_module(model, name, student)
    _warn_kept_dense([n for n, (student, _) in fitted.items()
                      if student is not None and n not in replaced], config.min_params_saved)
    return [report for n, (student, report) in fitted.items()
            if n in replaced or (student is None and config.budget is not None)]


def _as_batches(batches):
    """A lone tensor or dict as one batch: iterating it would feed the model its rows (or the
    dict's keys) one by one."""
    return [batches] if isinstance(batches, torch.Tensor | Mapping) else batches


def _warn_kept_dense(dense: list[str], min_params_saved: int) -> None:
    """Say which layers a rank or a target left dense, and why (a budget says so in its
    reports)."""
    if dense:
        short = "hold as many parameters as the layer or more" if min_params_saved == 1 else \
            f"save fewer than min_params_saved = {min_params_saved} parameters"
        warnings.warn(f"compress_model leaves {len(dense)} layer(s) dense ({', '.join(dense)}): "
                      f"at their rank the factors would {short} (a rank below about half of a "
                      "layer's smaller side saves)", stacklevel=3)


def _fit_layers(targets: dict[str, nn.Linear], statistics: dict,
                config: CompressionConfig) -> dict:
    """{layer name: (its student or None for dense, its report)}, at the ranks the config asks
    for: given, reaching a target, or allocated under a budget."""
    rank, damping = config.rank, config.damping
    ranks = None if config.budget is None else _budget_ranks(
        targets, statistics, config.budget, config.objective, damping)
    fitted = {}
    for n, m in targets.items():  # one layer's eigenvectors at a time: they are out x out
        given = rank[n] if isinstance(rank, dict) else rank
        if config.method != "data_aware":
            chosen = check_rank(given, min(m.in_features, m.out_features), f"layer {n!r}: rank")
            fitted[n] = _fit_baseline(n, m, statistics[n][0], chosen, config.method)
            continue
        spectrum = _spectrum(m, *statistics[n], damping) if ranks is None or ranks[n] else None
        chosen = ranks[n] if ranks is not None else _choose_rank(
            m, statistics[n][0], given, config.target_explained_variance, statistics[n][1],
            damping, f"layer {n!r}", spectrum[1])
        fitted[n] = _fit_layer(n, m, *statistics[n], chosen, damping, config.objective,
                               spectrum)
    return fitted


def _targets(model: nn.Module, layers, rank) -> dict:
    """The layers to compress, after the checks that need the model."""
    if isinstance(rank, dict) and layers is None:
        layers = list(rank)
    targets = _select(model, layers)
    if isinstance(rank, dict) and (missing := [n for n in targets if n not in rank]):
        raise ValueError(f"rank dict has no rank for layers {missing}")
    linears = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    if isinstance(rank, dict) and (unknown := [n for n in rank if n not in linears]):  # typos
        raise ValueError(f"rank dict names layers that are not nn.Linear layers of the model: "
                         f"{unknown}")
    return targets


def _spectrum(linear: nn.Linear, moments: InputMoments, weight, damping: float):
    """(G's roots or None, the layer's weighted output spectrum): the two eigendecompositions
    that its error curve and its closed form at any rank share, computed once per layer fit
    (and once more, eigenvalues kept, for a budget's allocation)."""
    roots = None if weight is None else output_weight_roots(weight, damping)
    return roots, output_spectrum(linear.weight, moments, None if roots is None else roots[0])


def _fit_layer(name: str, linear: nn.Linear, moments: InputMoments, weight, rank: int | None,
               damping: float, objective: str, spectrum):
    """(the closed form at `rank`, its report); (None, a dense layer's report) for None.
    `spectrum`: the layer's _spectrum (None with rank None)."""
    before = sum(p.numel() for p in linear.parameters())
    if rank is None:  # dense is the better use of a budget
        return None, LayerReport(name, linear.in_features, linear.out_features, None, before,
                                 before, moments.count, 1.0, None, objective)
    roots, spectrum = spectrum
    student = compress_data_aware(linear, moments, rank, weight, damping, spectrum, roots)
    calibration_ev = explained_variance_curve(
        data_aware_error_curve(linear.weight, moments, weight, damping, spectrum))[rank]
    return student, LayerReport(name, linear.in_features, linear.out_features, rank, before,
                                sum(p.numel() for p in student.parameters()), moments.count,
                                calibration_ev, None, objective)


def _fit_baseline(name: str, linear: nn.Linear, moments: InputMoments, rank: int,
                  method: str):
    """(an SVD baseline at `rank`, its report), its explained variance on the calibration rows
    from their moments: E||(W - W') x + b - b'||^2 = tr(D S D^T) + ||D mu + b - b'||^2, with
    D = W - W' and S the inputs' covariance."""
    student = compress_svd(linear, rank) if method == "svd" else \
        compress_svd_bias(linear, rank, moments.mean)
    weight = linear.weight.detach().double()
    gap = weight - student.up.detach().double() @ student.down.detach().double()
    offset = gap @ moments.mean
    if linear.bias is not None:
        offset = offset + linear.bias.detach().double() - student.bias.detach().double()
    error = (gap @ moments.covariance * gap).sum() + offset.pow(2).sum()
    total = (weight @ moments.covariance * weight).sum()
    explained = 1.0 - float(error / total) if total > 0 else 1.0
    return student, LayerReport(name, linear.in_features, linear.out_features, rank,
                                sum(p.numel() for p in linear.parameters()),
                                sum(p.numel() for p in student.parameters()), moments.count,
                                explained, None, "layer")


def _budget_ranks(targets: dict[str, nn.Linear], statistics: dict, budget: float,
                  objective: str, damping: float) -> dict[str, int | None]:
    """Each layer's rank under the budget (None: kept dense), allocated exactly."""
    curves, shapes, weights = {}, {}, {}  # the budget checked by CompressionConfig
    for name, linear in targets.items():
        moments, weight = statistics[name]
        curves[name] = data_aware_error_curve(linear.weight, moments, weight, damping)
        shapes[name] = (linear.in_features, linear.out_features)
        total = float(curves[name][0])  # the layer's output variance (G-weighted for "output")
        weights[name] = 1.0 if objective == "output" else 1.0 / total if total > 0 else 0.0
    kept = int(budget * sum(i * o for i, o in shapes.values()))
    return {n: c.rank for n, c in allocate_ranks(curves, shapes, kept, weights).items()}


def _layer_statistics(model: nn.Module, targets: dict[str, nn.Linear], calibration, call,
                      prober: _Probes | None, gram: dict, skip_padding: bool) -> dict:
    """{layer name: (its input moments, G = E[J^T J] of the output objective or None)}, from
    one pass of the model over the calibration batches."""
    accumulators = {n: MomentAccumulator(m.in_features, m.weight.device, gram[n])
                    for n, m in targets.items()}
    sensitivity = {n: [torch.zeros(m.out_features, m.out_features, dtype=torch.float64), 0]
                   for n, m in targets.items()}

    def on_grad(name, rows):
        rows = rows.detach().to(gram[name])
        sensitivity[name][0] += (rows.T @ rows).double().cpu()
        sensitivity[name][1] += rows.shape[0]

    _record(model, targets, calibration, call, lambda n, x: accumulators[n].update(x), prober,
            on_grad, skip_padding)
    statistics = {}
    for name, linear in targets.items():
        if accumulators[name].count == 0:
            raise ValueError(f"layer {name!r} saw no calibration input: is it used in forward()?")
        moments = _checked_moments(linear, accumulators[name].moments(), f"layer {name!r}")
        weight = None
        if prober is not None:
            total, count = sensitivity[name]
            if count == 0 or not total.trace() > 0:
                raise ValueError(f"layer {name!r} does not influence the output: no gradient "
                                 "reached it")
            weight = total / count
        statistics[name] = (moments, weight)
    return statistics


def _measure_holdout(model: nn.Module, replaced: dict, holdout, call, gram: dict,
                     skip_padding: bool) -> None:
    """Each replaced layer's explained variance of its own output on the holdout batches, run
    through the original model (before any layer is swapped), into its report."""
    squared_error = {n: 0.0 for n in replaced}
    output_moments = {n: MomentAccumulator(teacher.out_features, teacher.weight.device, gram[n])
                      for n, (teacher, _, _) in replaced.items()}

    def on_input(name, x):
        teacher, student, _ = replaced[name]
        # F.linear, not teacher(x): calling the hooked module here would re-enter this hook
        y = F.linear(x, teacher.weight, teacher.bias).double()
        # the factorisation's error, not the kernel's: two products, so that on CUDA the
        # fused kernel is not tuned here for every layer's shape and rank
        squared_error[name] += (y - student.two_products(x).double()).pow(2).sum().item()
        output_moments[name].update(y)

    with torch.no_grad():
        _record(model, {n: teacher for n, (teacher, _, _) in replaced.items()}, holdout, call,
                on_input, skip_padding=skip_padding, desc="measuring on holdout")
    constant = []
    for name, (_, _, report) in replaced.items():
        outputs = output_moments[name].moments()
        spread = outputs.covariance.trace().item() * outputs.count  # sum ||y - mean(y)||^2
        report.explained_variance_holdout = (1 - squared_error[name] / spread
                                             if spread > 0 else None)
        if spread <= 0:
            constant.append(name)
    if constant:  # 0 / 0: said once, with the reason, not reported as nan
        warnings.warn(f"explained_variance_holdout is None (not computable) for layer(s) "
                      f"{', '.join(map(repr, constant))}: their output does not vary over the "
                      f"{outputs.count} holdout row(s)", stacklevel=3)


def weights_kept(reports: list[LayerReport]) -> tuple[int, int]:
    """(weights the reported layers keep, weights they had), biases aside."""
    before = sum(r.in_features * r.out_features for r in reports)
    kept = sum(r.in_features * r.out_features if r.rank is None else
               lowrank_parameters(r.in_features, r.out_features, r.rank, bias=False)
               for r in reports)
    return kept, before


def format_report(reports: list[LayerReport]) -> str:
    """The reports as a table, with the share of the reported layers' weights kept, and a line
    saying what each explained variance measures."""
    lines = [f"{'layer':<32}{'objective':>10}{'shape':>14}{'rank':>6}{'params saved':>14}"
             f"{'EV calib (objective)':>22}{'EV holdout (layer)':>20}"]
    for r in reports:
        holdout = "n/a" if r.explained_variance_holdout is None else \
            f"{r.explained_variance_holdout:.4f}"
        lines.append(f"{r.name:<32}{r.objective:>10}{f'{r.out_features}x{r.in_features}':>14}"
                     f"{'dense' if r.rank is None else r.rank:>6}"
                     f"{r.params_saved:>14,}{r.explained_variance_calibration:>22.4f}"
                     f"{holdout:>20}")
    kept, before = weights_kept(reports)
    if before:
        lines.append(f"weights kept (biases aside): {kept:,} of {before:,} ({kept / before:.1%})")
    lines.append("EV calib (objective): explained variance on the calibration rows of the error "
                 "the objective minimises (for 'output', weighted by G, the layer's effect on "
                 "the model's output); EV holdout (layer): of the layer's own, unweighted output "
                 "on the held-out rows.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- save and load

METADATA_KEY = "distil_rank.lowrank_layers"


SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
                      "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
                      "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


def _check_module(model, what: str) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{what} takes the model (an nn.Module), got a {type(model).__name__}"
                        + (": pass the model itself, not its state_dict()"
                           if isinstance(model, dict) else ""))


def save_compressed(model: nn.Module, path: str | Path) -> None:
    """The model's state dict as safetensors, with which layers are LowRankLinear (and their
    shapes) in the file's metadata, so load_compressed can rebuild them in a fresh model. A
    tensor several keys share (tied weights, a module under two names) is stored once, under
    its first key; load_compressed ties the fresh model's keys to it again."""
    from safetensors.torch import save_file

    _check_module(model, "save_compressed")

    path = Path(path)
    if not path.parent.is_dir():
        raise OSError(f"{path}: folder {path.parent} does not exist")
    layers = {name: {"in_features": m.in_features, "out_features": m.out_features,
                     "rank": m.rank, "bias": m.bias is not None}
              for name, m in model.named_modules() if isinstance(m, LowRankLinear)}
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    for group in _shared_keys(state):  # tied weights: stored once (load_compressed ties them)
        for key in group[1:]:
            del state[key]
    try:
        save_file(state, str(path), metadata={METADATA_KEY: json.dumps(layers)})
    except Exception as err:  # the storage library's own errors say nothing of the file
        raise OSError(f"{path}: could not be written ({first_line(err)})") from None


def _shared_keys(state: dict[str, torch.Tensor]) -> list[list[str]]:
    """The groups of state-dict keys that hold one tensor (tied weights), in state order."""
    groups: dict[tuple, list[str]] = {}
    for key, value in state.items():
        where = (value.untyped_storage().data_ptr(), value.storage_offset(), value.shape,
                 value.stride(), value.dtype)
        groups.setdefault(where, []).append(key)
    return [keys for keys in groups.values() if len(keys) > 1]


def _read_layers(path: Path, text: str) -> dict[str, dict]:
    """The file's declared low-rank layers, each {in_features, out_features, rank, bias}."""
    try:
        layers = json.loads(text)
        valid = isinstance(layers, dict) and all(
            isinstance(v, dict) and all(isinstance(v.get(k), int) and not isinstance(v.get(k), bool)
                                        for k in ("in_features", "out_features", "rank"))
            and isinstance(v.get("bias"), bool) for v in layers.values())
    except ValueError:
        valid = False
    if not valid:
        raise ValueError(f"{path}: corrupt {METADATA_KEY} metadata")
    return layers


def _expected_state(model: nn.Module, layers: dict[str, dict],
                    path: Path) -> tuple[dict, list[list[str]]]:
    """({key: (shape, dtype)} the model's state dict will have once `layers` are low-rank, the
    groups of those keys that will hold one tensor), checked against the model's own layers;
    nothing is changed."""
    state = model.state_dict()
    expected = {k: (tuple(v.shape), v.dtype) for k, v in state.items()}
    ties = _shared_keys(state)
    modules = dict(model.named_modules())
    for name, layer in layers.items():
        module = modules.get(name)
        if not isinstance(module, (nn.Linear, LowRankLinear)):
            raise ValueError(f"{path}: layer {name!r} is not a linear layer of this model")
        file_shape = (layer["in_features"], layer["out_features"])
        if file_shape != (module.in_features, module.out_features):
            raise ValueError(f"{path}: layer {name!r} is {file_shape[0]} -> {file_shape[1]} in "
                             f"the file but {module.in_features} -> {module.out_features} in "
                             "the model")
        check_rank(layer["rank"], min(file_shape), f"{path}: layer {name!r} rank")
        dtype = (module.weight if isinstance(module, nn.Linear) else module.up).dtype
        names = [n for n, m in model.named_modules(remove_duplicate=False) if m is module]
        parts = {"down": (layer["rank"], module.in_features),
                 "up": (module.out_features, layer["rank"]),
                 **({"bias": (module.out_features,)} if layer["bias"] else {})}
        for alias in names:  # a module registered under several names: replaced under each
            for key in [k for k in expected if k.startswith(f"{alias}.")]:
                del expected[key]
            expected.update({f"{alias}.{part}": (shape, dtype) for part, shape in parts.items()})
        ties += [[f"{alias}.{part}" for alias in names] for part in parts] if len(names) > 1 \
            else []
    return expected, [group for group in ([k for k in g if k in expected] for g in ties)
                      if len(group) > 1]


def _stored_once(ties: list[list[str]], declared: dict) -> dict[str, str]:
    """For each group of keys that hold one tensor and of which the file stores one (as
    save_compressed writes it), {every other key: the stored one}."""
    tied = {}
    for group in ties:
        if len(stored := [k for k in group if k in declared]) == 1:
            tied |= {key: stored[0] for key in group if key != stored[0]}
    return tied


def _read_header(path: Path) -> tuple[dict, dict]:
    """A safetensors file's (metadata, {key: (shape, dtype name)}), read from its header alone."""
    from safetensors import safe_open

    if not path.is_file():
        raise OSError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}, {k: (tuple(f.get_slice(k).get_shape()),
                                            f.get_slice(k).get_dtype()) for k in list(f.keys())}
    except OSError as err:
        raise OSError(f"{path}: could not be read ({first_line(err)})") from None
    except Exception as err:  # the storage library's own error type says nothing to a user
        raise ValueError(f"{path}: not a safetensors file ({first_line(err)})") from None


def load_compressed(model: nn.Module, path: str | Path) -> nn.Module:
    """Replace the layers named in the file by LowRankLinear of the saved shapes, then load every
    weight. The whole file is checked against the model first (layer names and widths, every
    key, shape and dtype as declared, before anything is allocated, then finite values): either
    the model is fully loaded, or it is untouched and a ValueError (OSError when the file
    cannot be read) names the file and the problem. Returns the model."""
    from safetensors.torch import load_file

    _check_module(model, "load_compressed")
    path = Path(path)
    metadata, declared = _read_header(path)
    if METADATA_KEY not in metadata:
        raise ValueError(f"{path}: no {METADATA_KEY} metadata; not written by save_compressed")
    layers = _read_layers(path, metadata[METADATA_KEY])
    expected, ties = _expected_state(model, layers, path)
    tied = _stored_once(ties, declared)
    expected = {k: v for k, v in expected.items() if k not in tied}
    missing, unexpected = sorted(expected.keys() - declared), sorted(declared.keys() - expected)
    if missing and not unexpected and all(k.startswith("pooler.") for k in missing):
        raise ValueError(f"{path}: was saved from a model without a pooler, and this one has "
                         f"{missing[:2]}: build it as the saved one was built (a Hugging Face "
                         "model: add_pooling_layer=False, e.g. EsmModel(config, "
                         "add_pooling_layer=False))")
    if missing or unexpected:
        raise ValueError(f"{path}: does not match the model (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    for key, (shape, dtype) in expected.items():
        file_shape, file_dtype = declared[key]
        if file_shape != shape or SAFETENSORS_DTYPES.get(file_dtype) != dtype:
            raise ValueError(f"{path}: {key} is {file_dtype} {list(file_shape)} in the file, the "
                             f"model needs {str(dtype).replace('torch.', '')} {list(shape)}")
    try:
        tensors = load_file(str(path))
    except Exception as err:  # e.g. a file cut short after its header
        raise ValueError(f"{path}: could not be read ({first_line(err)})") from None
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{path}: {bad[0]} holds NaN or Inf")
    tensors |= {key: tensors[stored] for key, stored in tied.items()}

    # Every check passed: change the model.
    device = next(model.parameters()).device
    for name, layer in layers.items():
        stored = tied.get(f"{name}.up", f"{name}.up")  # the key its factor is stored under
        dtype = SAFETENSORS_DTYPES[declared[stored][1]]  # the model's: checked above
        _set_module(model, name, LowRankLinear(
            layer["in_features"], layer["out_features"], layer["rank"], bias=layer["bias"],
            device=device, dtype=dtype, initialise=False))
    model.load_state_dict(tensors, strict=True)
    return model
