"""Compress the linear layers of your own model with the closed form the benchmark shows best.

    from distil_rank.api import compress_linear, compress_model, save_compressed, load_compressed

    small = compress_linear(head.proj, calibration=embeddings, rank=64)            # one layer
    small = compress_linear(head.proj, calibration=batches, target_explained_variance=0.99)
    report = compress_model(model, calibration=train_batches, holdout=val_batches,
                            layers=["proj"], target_explained_variance=0.99)         # in place
    save_compressed(model, "model.lowrank.safetensors")
    load_compressed(fresh_model, "model.lowrank.safetensors")

Calibration inputs are what the layer sees: for compress_linear a tensor [N, in] or an iterable
of such batches (any leading dimensions are flattened); for compress_model, batches of *model*
inputs, and forward hooks record what reaches each chosen layer. Statistics are accumulated in
float64 in one pass (memory O(in^2) per layer, not O(N)).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from distil_rank.data import split_indices
from distil_rank.distill import DistillSettings, distill
from distil_rank.errors import first_line
from distil_rank.lowrank import (
    LowRankLinear,
    check_rank,
    compress_data_aware,
    data_aware_error_curve,
    explained_variance_curve,
)
from distil_rank.moments import InputMoments, MomentAccumulator, moments_of
from distil_rank.stats import smallest_rank_reaching


def rank_for_target(linear: nn.Linear, moments: InputMoments, target: float) -> int:
    """The smallest rank whose closed form explains `target` of the layer's output variance on
    the calibration inputs (1 when the output does not vary at all)."""
    if not 0 < target <= 1:
        raise ValueError(f"target explained variance {target} must be in (0, 1]")
    curve = explained_variance_curve(data_aware_error_curve(linear.weight, moments))
    rank = smallest_rank_reaching(curve, (target,))[str(target)]
    full = min(linear.in_features, linear.out_features)
    return max(1, min(full, rank if rank is not None else full))


def _choose_rank(linear, moments, rank, target):
    if (rank is None) == (target is None):
        raise ValueError("give exactly one of rank and target_explained_variance")
    if rank is not None:
        return check_rank(rank, min(linear.in_features, linear.out_features), f"{linear}: rank")
    return rank_for_target(linear, moments, target)


def compress_linear(linear: nn.Linear, calibration, *, rank: int | None = None,
                    target_explained_variance: float | None = None, refine_steps: int = 0,
                    refine_lr: float = 3e-3, refine_batch_size: int = 64, alpha: float = 0.1,
                    holdout_fraction: float = 0.15, seed: int = 0) -> LowRankLinear:
    """A drop-in low-rank replacement of `linear`, by the closed form (the least mean squared
    output error on the calibration inputs), optionally refined by distillation.

    With refine_steps > 0 the calibration rows are split (seeded); the closed form is fitted and
    distilled on one part, and the checkpoint with the least error on the other part is kept,
    the closed form itself included, so refinement never makes the held-out error worse.
    Refinement needs the rows in memory: an iterable is concatenated.
    """
    if refine_steps <= 0:
        moments = calibration if isinstance(calibration, InputMoments) else moments_of(calibration)
        chosen = _choose_rank(linear, moments, rank, target_explained_variance)
        return compress_data_aware(linear, moments, chosen)

    if isinstance(calibration, InputMoments):
        raise ValueError("refinement distils on rows: pass the calibration rows, not moments")
    x = calibration if isinstance(calibration, torch.Tensor) else torch.cat(list(calibration))
    x = x.reshape(-1, linear.in_features).to(linear.weight.device, linear.weight.dtype)
    fit_rows, held_rows = split_indices(x.shape[0], holdout_fraction, seed)
    fit, holdout = x[fit_rows.to(x.device)], x[held_rows.to(x.device)]
    moments = moments_of(fit)
    chosen = _choose_rank(linear, moments, rank, target_explained_variance)
    start = compress_data_aware(linear, moments, chosen)
    settings = DistillSettings(steps=refine_steps, lr=refine_lr, batch_size=refine_batch_size,
                               alpha=alpha, weight_decay=0.0, eval_every=max(1, refine_steps // 20))
    result = distill(linear, start, fit, settings, seed=seed, device=linear.weight.device,
                     holdout_x=holdout, desc="refine")
    return result.student


# ----------------------------------------------------------------------------- whole models


@dataclass
class LayerReport:
    name: str
    in_features: int
    out_features: int
    rank: int
    params_before: int
    params_after: int
    calibration_rows: int
    explained_variance_calibration: float
    explained_variance_holdout: float | None  # None without holdout batches

    @property
    def params_saved(self) -> int:
        return self.params_before - self.params_after


def _select(model: nn.Module, layers) -> dict[str, nn.Linear]:
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    if layers is None:
        return linears
    if callable(layers):
        return {n: m for n, m in linears.items() if layers(n, m)}
    missing = [n for n in layers if n not in linears]
    if missing:
        raise ValueError(f"not nn.Linear layers of the model: {missing}; "
                         f"the model's are: {sorted(linears)}")
    return {n: linears[n] for n in layers}


def _run(model: nn.Module, batches: Iterable, call: Callable | None) -> None:
    with torch.no_grad():
        for batch in batches:
            if call is not None:
                call(model, batch)
            elif isinstance(batch, dict):
                model(**batch)
            elif isinstance(batch, (list, tuple)):
                model(*batch)
            else:
                model(batch)


def _layer_inputs(model, targets: dict[str, nn.Module], batches, call, on_input) -> None:
    """Run the model over `batches`; call on_input(name, input rows) at every target layer."""
    def hook_for(name):
        def hook(module, args):
            on_input(name, args[0].reshape(-1, args[0].shape[-1]))
            # returning None leaves the layer's input unchanged
        return hook

    handles = [module.register_forward_pre_hook(hook_for(name)) for name, module in targets.items()]
    try:
        _run(model, batches, call)
    finally:
        for handle in handles:
            handle.remove()


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def compress_model(model: nn.Module, calibration: Iterable, *, layers=None,
                   rank: int | None = None, target_explained_variance: float | None = None,
                   holdout: Iterable | None = None, call: Callable | None = None,
                   min_params_saved: int = 1) -> list[LayerReport]:
    """Replace the chosen nn.Linear layers of `model`, in place, by closed-form low-rank ones.

    layers: None (every nn.Linear), a list of module names, or a predicate (name, module) -> bool.
    calibration / holdout: iterables of model inputs (a tensor, a tuple of positional arguments or
    a dict of keyword arguments per batch), or use `call(model, batch)` to run one batch.
    A layer whose chosen rank would not save at least `min_params_saved` parameters is left dense
    and not reported. The inputs of every layer are recorded from the original model in one pass.
    Returns one LayerReport per replaced layer; explained variance is measured on the holdout
    batches when given.
    """
    targets = _select(model, layers)
    if not targets:
        raise ValueError("no nn.Linear layer selected")
    accumulators = {n: MomentAccumulator(m.in_features, m.weight.device)
                    for n, m in targets.items()}
    _layer_inputs(model, targets, calibration, call, lambda n, x: accumulators[n].update(x))

    replaced = {}
    for name, linear in targets.items():
        if accumulators[name].count == 0:
            raise ValueError(f"layer {name!r} saw no calibration input: is it used in forward()?")
        moments = accumulators[name].moments()
        chosen = _choose_rank(linear, moments, rank, target_explained_variance)
        student = compress_data_aware(linear, moments, chosen)
        before = sum(p.numel() for p in linear.parameters())
        after = sum(p.numel() for p in student.parameters())
        if before - after < min_params_saved:
            continue
        calibration_ev = explained_variance_curve(
            data_aware_error_curve(linear.weight, moments))[chosen]
        replaced[name] = (linear, student, LayerReport(
            name, linear.in_features, linear.out_features, chosen, before, after,
            moments.count, calibration_ev, None))

    if holdout is not None and replaced:
        squared_error = {n: 0.0 for n in replaced}
        output_moments = {n: MomentAccumulator(replaced[n][0].out_features,
                                               replaced[n][0].weight.device) for n in replaced}

        def on_input(name, x):
            if name not in replaced:
                return
            teacher, student, _ = replaced[name]
            # F.linear, not teacher(x): calling the hooked module here would re-enter this hook
            y = F.linear(x, teacher.weight, teacher.bias).double()
            squared_error[name] += (y - student(x).double()).pow(2).sum().item()
            output_moments[name].update(y)

        _layer_inputs(model, {n: targets[n] for n in replaced}, holdout, call, on_input)
        for name, (_, _, report) in replaced.items():
            outputs = output_moments[name].moments()
            spread = outputs.covariance.trace().item() * outputs.count  # sum ||y - mean(y)||^2
            report.explained_variance_holdout = (1 - squared_error[name] / spread
                                                 if spread > 0 else None)

    for name, (_, student, _) in replaced.items():
        _set_module(model, name, student)
    return [report for _, _, report in replaced.values()]


def format_report(reports: list[LayerReport]) -> str:
    lines = [f"{'layer':<32}{'shape':>14}{'rank':>6}{'params saved':>14}{'EV calib':>10}"
             f"{'EV holdout':>12}"]
    for r in reports:
        holdout = "n/a" if r.explained_variance_holdout is None else \
            f"{r.explained_variance_holdout:.4f}"
        lines.append(f"{r.name:<32}{f'{r.out_features}x{r.in_features}':>14}{r.rank:>6}"
                     f"{r.params_saved:>14,}{r.explained_variance_calibration:>10.4f}{holdout:>12}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- save and load

METADATA_KEY = "distil_rank.lowrank_layers"


def save_compressed(model: nn.Module, path: str | Path) -> None:
    """The model's state dict as safetensors, with which layers are LowRankLinear (and their
    shapes) in the file's metadata, so load_compressed can rebuild them in a fresh model."""
    from safetensors.torch import save_file

    layers = {name: {"in_features": m.in_features, "out_features": m.out_features,
                     "rank": m.rank, "bias": m.bias is not None}
              for name, m in model.named_modules() if isinstance(m, LowRankLinear)}
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={METADATA_KEY: json.dumps(layers)})


def load_compressed(model: nn.Module, path: str | Path) -> nn.Module:
    """Replace the layers named in the file by LowRankLinear of the saved shapes, then load every
    weight (strictly: a missing or unexpected key is an error). Returns the model."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except OSError:
        raise
    except Exception as err:  # the storage library's own error type says nothing to a user
        raise ValueError(f"{path}: not a safetensors file ({first_line(err)})") from None
    if METADATA_KEY not in metadata:
        raise ValueError(f"{path}: no {METADATA_KEY} metadata; not written by save_compressed")
    device = next(model.parameters()).device
    for name, shape in json.loads(metadata[METADATA_KEY]).items():
        old = model.get_submodule(name)
        dtype = old.weight.dtype if isinstance(old, nn.Linear) else old.up.dtype
        _set_module(model, name, LowRankLinear(shape["in_features"], shape["out_features"],
                                               shape["rank"], bias=shape["bias"], device=device,
                                               dtype=dtype))
    model.load_state_dict(load_file(str(path), device=str(device)), strict=True)
    return model

