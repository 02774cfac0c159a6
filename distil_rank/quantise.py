"""Int8 on top of low rank, in one call: `quantise_int8(model)`.

A quantiser converts `nn.Linear` modules, so a LowRankLinear (two factors in one module) is
first written as the two `nn.Linear` it is (`as_linears`: x -> down -> up + bias, the same
function to rounding), and then every `nn.Linear` of the model is quantised:

- "weight_only" (the default): int8 weights with a scale per output channel, activations kept
  in floating point (torchao's Int8WeightOnlyConfig; `pip install torchao`). It stores a
  quarter of the float32 bytes, and its error is the weights' rounding alone.
- "dynamic": int8 weights and activations quantised per batch at run time (PyTorch's
  torch.ao.quantization.quantize_dynamic, CPU only, deprecated by PyTorch in favour of
  torchao; kept because it is the int8 that runs fast on a CPU without torchao's kernels).

What each buys on a real model, beside low rank: docs/results.md (`bench/real_model.py`).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from distil_rank.lowrank import LowRankLinear

MODES = ("weight_only", "dynamic")


def as_linears(model: nn.Module) -> nn.Module:
    """Replace, in place, every LowRankLinear of `model` by nn.Sequential(nn.Linear(in, r,
    bias=False), nn.Linear(r, out)) holding its factors and bias: the same function, in
    modules that any quantiser or exporter knows. Returns the model (a LowRankLinear passed
    alone comes back as its Sequential)."""
    if isinstance(model, LowRankLinear):
        return _two_linears(model)
    converted: dict[int, nn.Sequential] = {}  # one per layer: a layer under two names stays one
    for name, module in list(model.named_modules(remove_duplicate=False)):
        if isinstance(module, LowRankLinear):
            parent, _, child = name.rpartition(".")
            if id(module) not in converted:
                converted[id(module)] = _two_linears(module)
            setattr(model.get_submodule(parent) if parent else model, child,
                    converted[id(module)])
    return model


def _two_linears(module: LowRankLinear) -> nn.Sequential:
    options = dict(device=module.up.device, dtype=module.up.dtype)
    down = nn.Linear(module.in_features, module.rank, bias=False, **options)
    up = nn.Linear(module.rank, module.out_features, bias=module.bias is not None, **options)
    with torch.no_grad():
        down.weight.copy_(module.down)
        up.weight.copy_(module.up)
        if module.bias is not None:
            up.bias.copy_(module.bias)
    return nn.Sequential(down, up).requires_grad_(module.up.requires_grad)


def _is_quantised(module: nn.Module) -> bool:
    """An nn.Linear whose weight torchao has made a quantised tensor subclass, or one of
    torch.ao's quantised modules."""
    return (isinstance(module, nn.Linear) and type(module.weight.data) is not torch.Tensor) or \
        (type(module).__module__.startswith("torch.ao.nn.quantized")
         and type(module).__name__ == "Linear")


def quantise_int8(model: nn.Module, mode: str = "weight_only") -> nn.Module:
    """Int8 of every nn.Linear of `model`, the factors of its LowRankLinear layers included
    (as_linears first), in place for "weight_only", and returned for both modes (torch.ao's
    "dynamic" returns a new model). The model is put in eval mode."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: expected one of {', '.join(MODES)}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"quantise_int8 takes an nn.Module, got {type(model).__name__}")
    if quantised := [name or type(module).__name__ for name, module in model.named_modules()
                     if _is_quantised(module)]:
        raise ValueError(f"quantise_int8: the model is already quantised ({len(quantised)} "
                         f"int8 Linear layer(s), the first {quantised[0]!r}); quantise the float "
                         "model ('weight_only' works in place: keep a copy)")
    model = as_linears(model).eval()
    if mode == "dynamic":
        with warnings.catch_warnings():  # its deprecation notice, said in this module's doc
            warnings.simplefilter("ignore")
            return torch.ao.quantization.quantize_dynamic(model, {nn.Linear},
                                                          dtype=torch.qint8)
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError:
        raise ImportError("weight-only int8 needs torchao: pip install torchao "
                          "(or mode='dynamic', PyTorch's own)") from None
    quantize_(model, Int8WeightOnlyConfig())
    return model
