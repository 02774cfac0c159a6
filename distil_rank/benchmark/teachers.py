"""The teacher strategies: three frozen nn.Linear(D, D) with bias, judged by their own output,
and a trained head whose first layer is compressed and judged by the task.

Random        PyTorch's default initialisation (Kaiming-uniform weight, uniform bias): a layer
              with a flat spectrum, the hardest case for any low-rank method.
Task-Trained  trained by AdamW on a denoising proxy task over the training embeddings,
              x + noise -> x, from zero by default: a layer learned on the embeddings, all of
              whose weight the data asked for. From PyTorch's default init instead
              (init="default", the recipe before), the random part in directions the
              embeddings do not vary in stays, and a rank-r SVD spends its rank on it
              (scripts/task_trained_ablation.py measures both).
Spectral      orthogonal U, V and singular values exp(-i / (tau * D)): a layer that truly is
              nearly low rank, the easy case.

Fitness-Head  Linear(D, D) -> GELU -> Linear(D, 1), trained by Adam on the standardised measured
              fitness of the fit rows, keeping the checkpoint with the least MSE on the
              selection rows. The input standardisation is folded into the first layer, which
              therefore reads raw embeddings like every other teacher. Its `readout` (GELU and
              the output layer) is what task-aware compression weights the error by.

Every draw comes from a generator seeded by `stage_seed(seed, "teachers/<name>")`; the global
random state is never touched.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from distil_rank.lowrank import LowRankLinear, empty_linear, seeded_linear
from distil_rank.optim import Adam
from distil_rank.runtime import stage_seed

HEAD_NAME = "Fitness-Head"


@dataclass
class Teacher:
    """A layer to compress and, for a head, the frozen rest of it that reads the layer."""

    layer: nn.Linear
    readout: nn.Module | None = None  # None: the layer is judged by its own output
    losses: list[float] | None = None  # a trained teacher's loss per step (Task-Trained's)


@dataclass(frozen=True)
class TeacherSettings:
    steps: int = 500  # AdamW steps of the denoising proxy task (Task-Trained)
    lr: float = 1e-3  # its learning rate
    batch_size: int = 256  # rows per denoising step
    denoise_noise: float = 0.5  # noise std, relative to the embeddings' per-coordinate spread
    spectral_tau: float = 0.1  # e-folding length of the Spectral teacher's singular values, / D
    init: str = "zero"  # Task-Trained's start, a key of TEACHER_INIT_SCALES (docs: ablation)
    weight_decay: float = 0.0  # AdamW's decoupled weight decay on the denoising task


@dataclass(frozen=True)
class HeadSettings:
    """The Fitness-Head teacher, built when both splits carry fitness labels."""

    steps: int = 1500  # Adam steps on the standardised fitness of the fit rows
    lr: float = 1e-3  # Adam learning rate
    batch_size: int = 128  # rows per step
    eval_every: int = 50  # steps between checkpoint evaluations on the selection rows


def _freeze(layer: nn.Module) -> nn.Module:
    layer.requires_grad_(False)
    return layer.eval()


def random_teacher(dim: int, seed: int) -> nn.Linear:
    return _freeze(seeded_linear(dim, dim, torch.Generator().manual_seed(seed)))


# Task-Trained's initial weights: nn.Linear's default (Kaiming-uniform) init times this scale.
TEACHER_INIT_SCALES = {"default": 1.0, "small": 1e-2, "zero": 0.0}


def task_trained_teacher(train_x: torch.Tensor, settings: TeacherSettings,
                         seed: int) -> tuple[nn.Linear, list[float]]:
    """One seed's task_trained_teachers."""
    return task_trained_teachers(train_x, settings, [seed])[0]


def task_trained_teachers(train_x: torch.Tensor, settings: TeacherSettings,
                          seeds: list[int]) -> list[tuple[nn.Linear, list[float]]]:
    """Denoising: minimise ||layer(x + e) - x||^2 with e ~ N(0, (noise * spread)^2 I), where
    spread is the root-mean-square per-coordinate deviation of the embeddings from their mean
    (so the noise is on the scale of the data's own variation, not of its large common mean),
    by AdamW from nn.Linear's default init scaled by TEACHER_INIT_SCALES[settings.init].

    One teacher per seed, trained as one stack ([seeds, D, D] weights, one batched product a
    step): each seed draws its init, rows and noise from its own generator in the order it
    would alone, its loss is its own batch's mean, and AdamW acts elementwise, so each teacher
    is the one it would be alone, to the rounding of a batched product. Returns (the frozen
    layer, its loss per step) per seed."""
    if settings.init not in TEACHER_INIT_SCALES:
        raise ValueError(f"teacher init {settings.init!r}: expected one of "
                         f"{', '.join(TEACHER_INIT_SCALES)}")
    dim, scale = train_x.shape[1], TEACHER_INIT_SCALES[settings.init]
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    starts = [seeded_linear(dim, dim, g) for g in generators]
    # stored as [seeds, in, out], the layout the product reads and its gradient comes out in
    weight = (torch.stack([layer.weight.detach().mT for layer in starts]) * scale).contiguous()
    bias = torch.stack([layer.bias.detach() for layer in starts]) * scale
    spread = (train_x - train_x.mean(0)).pow(2).mean().sqrt()
    sigma = float(settings.denoise_noise * spread)
    optimiser = Adam([weight, bias], lr=settings.lr, weight_decay=settings.weight_decay,
                     decoupled=True, fused=True)  # AdamW, one pass over each tensor a step
    rows = min(settings.batch_size, train_x.shape[0])
    clean, noisy = (train_x.new_empty(len(seeds), rows, dim) for _ in range(2))
    losses = torch.empty(settings.steps, len(seeds))
    for step in range(settings.steps):
        for k, g in enumerate(generators):  # each seed's draws, in the order it makes them alone
            picked = torch.randint(train_x.shape[0], (rows,), generator=g)
            torch.index_select(train_x, 0, picked, out=clean[k])
            torch.randn(rows, dim, generator=g, out=noisy[k])
        noisy.mul_(sigma).add_(clean)
        residual = torch.baddbmm(bias.unsqueeze(1), noisy, weight).sub_(clean)
        torch.mean(residual.square(), dim=(1, 2), out=losses[step])  # each seed's own loss
        # its gradient, written out (autograd's bookkeeping was a fifth of a step, for the
        # same products): d/d(out) of the mean square is 2 (out - clean) / (rows * dim)
        residual.mul_(2.0 / (rows * dim))
        weight.grad, bias.grad = torch.bmm(noisy.mT, residual), residual.sum(1)
        optimiser.step()
    losses = losses.T.tolist()
    teachers = []
    for k, layer in enumerate(starts):
        with torch.no_grad():
            layer.weight.copy_(weight[k].mT)
            layer.bias.copy_(bias[k])
        teachers.append((_freeze(layer), losses[k]))
    return teachers


def spectral_teacher(dim: int, *, seed: int, tau: float) -> nn.Linear:
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    singular = torch.exp(-torch.arange(dim, dtype=torch.float64) / (tau * dim))
    layer = empty_linear(dim, dim)
    with torch.no_grad():
        layer.weight.copy_(u @ torch.diag(singular) @ v.T)
        bound = dim**-0.5  # the default bias init of nn.Linear
        layer.bias.copy_((torch.rand(dim, generator=g, dtype=torch.float64) * 2 - 1) * bound)
    return _freeze(layer)


@dataclass
class HeadJob:
    """One head to train on labels (train_heads): its inputs and targets, fit and selection,
    its settings and the generator its batches are drawn from."""

    head: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    selection_x: torch.Tensor
    selection_y: torch.Tensor
    settings: HeadSettings
    generator: torch.Generator


def train_head(head: nn.Module, x: torch.Tensor, y: torch.Tensor, selection_x: torch.Tensor,
               selection_y: torch.Tensor, settings: HeadSettings, generator: torch.Generator):
    """Train `head` in place by Adam on the MSE to `y` (one random batch of rows per step),
    evaluating the selection rows' MSE every `eval_every` steps (step 0 and the last included),
    and load the checkpoint with the least: the Fitness-Head's rule, shared by every head the
    benchmark trains on labels. Returns (the selection MSE per evaluation, the step kept)."""
    return train_heads([HeadJob(head, x, y, selection_x, selection_y, settings, generator)])[0]


def train_heads(jobs: list[HeadJob]) -> list[tuple[list[float], int]]:
    """train_head of every job, those with the same layers, parameter shapes and settings
    trained as one stack (their parameters stacked, one batched product a step; see
    _stacked_forward): each job draws its batches from its own generator in the order it
    would alone, its loss is its own batch's mean, Adam acts elementwise and each keeps its own
    best checkpoint, so each head is the one it would be alone, to the rounding of a batched
    product. Jobs may differ in their rows and row counts; jobs that share an input tensor
    share it in memory."""
    groups: dict[tuple, list[int]] = {}
    for k, job in enumerate(jobs):
        shapes = tuple((name, p.shape) for name, p in job.head.named_parameters())
        batch = min(job.settings.batch_size, job.x.shape[0])
        key = (repr(job.head), shapes, replace(job.settings, batch_size=batch))  # repr: layers
        groups.setdefault(key, []).append(k)
    results = [None] * len(jobs)
    for members in groups.values():
        for k, result in zip(members, _train_stack([jobs[k] for k in members])):
            results[k] = result
    return results


def _padded(tensors: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The tensors stacked along a new first dimension, zero-padded to the longest, and each
    one's length."""
    return (nn.utils.rnn.pad_sequence(tensors, batch_first=True),
            torch.tensor([len(t) for t in tensors]))


def _shared(tensors: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(the distinct tensors, padded and stacked; each tensor's index among them)."""
    slot: dict[int, int] = {}
    index = torch.tensor([slot.setdefault(id(t), len(slot)) for t in tensors])
    distinct = {slot[id(t)]: t for t in tensors}
    return _padded([distinct[i] for i in range(len(distinct))])[0], index


def _stacked_forward(head: nn.Module):
    """(f(params, x, saved=None), its backward or None, the names of the params f reads
    transposed) for a stack of heads shaped like `head`, params stacked along a first dimension
    and x [heads, rows, in]: a Sequential of Linear, LowRankLinear and GELU (the heads the
    benchmark trains) as _BatchedLayers; any other head as vmap over functional_call, which
    reads the modules' own layout, with autograd."""
    layers = list(head) if isinstance(head, nn.Sequential) else [head]
    if not all(type(layer) in (nn.Linear, LowRankLinear, nn.GELU) for layer in layers) or \
            any(isinstance(layer, nn.GELU) and layer.approximate != "none" for layer in layers):
        base = copy.deepcopy(head).to("meta")
        return torch.vmap(lambda p, x: torch.func.functional_call(base, p, (x,))), None, set()
    batched = _BatchedLayers(layers, "" if layers == [head] else "{}.")
    return batched.forward, batched.backward, batched.transposed


class _BatchedLayers:
    """Stacked Linear, LowRankLinear and GELU layers as batched products that read every
    matrix but a readout's as [heads, in, out], the layout its gradient comes out in (a
    transposed view made autograd copy it every step), with the backward written out:
    backward(params, saved, grad) takes the inputs forward kept in `saved` and d loss / d
    output, and gives every parameter's gradient, the products autograd would take without its
    bookkeeping."""

    def __init__(self, layers: list[nn.Module], prefix: str):
        self.layers, self.names = layers, [prefix.format(i) for i in range(len(layers))]
        self.transposed = set()
        for name, layer in zip(self.names, layers):
            if isinstance(layer, LowRankLinear):
                self.transposed.add(name + "down")
            if isinstance(layer, (nn.Linear, LowRankLinear)) and layer.out_features > 1:
                self.transposed.add(name + ("up" if isinstance(layer, LowRankLinear) else
                                            "weight"))

    def forward(self, params, x, saved=None):
        for name, layer in zip(self.names, self.layers):
            kept, hidden = x, None
            if isinstance(layer, nn.GELU):
                x = F.gelu(x)
            else:
                if isinstance(layer, LowRankLinear):
                    x = hidden = torch.bmm(x, params[name + "down"])
                weight = params[name + ("up" if isinstance(layer, LowRankLinear) else "weight")]
                if layer.out_features == 1:  # a readout: a product over `in`, and no outer
                    x = (x * weight).sum(-1, keepdim=True)  # product in the backward
                else:
                    x = torch.bmm(x, weight)
                if name + "bias" in params:
                    x = x + params[name + "bias"].unsqueeze(1)
            if saved is not None:
                saved.append((kept, hidden))
        return x

    def backward(self, params, saved, grad):
        grads = {}
        for i in reversed(range(len(self.layers))):
            name, layer, (x, hidden) = self.names[i], self.layers[i], saved[i]
            if isinstance(layer, nn.GELU):
                grad = torch.ops.aten.gelu_backward(grad, x)
                continue
            if name + "bias" in params:
                grads[name + "bias"] = grad.sum(1)
            low_rank = isinstance(layer, LowRankLinear)
            key = name + ("up" if low_rank else "weight")
            weight, inputs, wanted = params[key], hidden if low_rank else x, i > 0 or low_rank
            if layer.out_features == 1:
                grads[key] = (grad * inputs).sum(1, keepdim=True)
                grad = grad * weight if wanted else None
            else:
                grads[key] = torch.bmm(inputs.mT, grad)
                grad = torch.bmm(grad, weight.mT) if wanted else None  # no input needs one
            if low_rank:
                grads[name + "down"] = torch.bmm(x.mT, grad)
                grad = torch.bmm(grad, params[name + "down"].mT) if i else None
        return grads


def _train_stack(jobs: list[HeadJob]) -> list[tuple[list[float], int]]:
    settings = jobs[0].settings
    params, buffers = torch.func.stack_module_state([job.head for job in jobs])
    if buffers:
        raise ValueError("train_heads trains heads without buffers (no batch norm)")
    forward, backward, transposed = _stacked_forward(jobs[0].head)
    params = {n: p.detach().mT.contiguous().requires_grad_() if n in transposed else p
              for n, p in params.items()}
    x, x_slot = _shared([job.x for job in jobs])
    y, rows = _padded([job.y for job in jobs])
    flat_x, x_start = x.flatten(0, 1), x_slot.unsqueeze(1) * x.shape[1]
    sel_x, sel_slot = _shared([job.selection_x for job in jobs])
    sel_y, sel_rows = _padded([job.selection_y for job in jobs])
    sel_mask = torch.arange(sel_y.shape[1]) < sel_rows.unsqueeze(1)
    batch = min(settings.batch_size, int(rows.min()))  # the same for every job of a group
    optimiser = Adam(params.values(), lr=settings.lr, fused=True)  # one pass per tensor a step
    checkpoints = [[] for _ in jobs]
    best = [(float("inf"), None, 0) for _ in jobs]
    for step in range(settings.steps + 1):
        if step % settings.eval_every == 0 or step == settings.steps:
            with torch.no_grad():
                error = (forward(params, sel_x[sel_slot]).squeeze(-1) - sel_y) ** 2
                mse = ((error * sel_mask).sum(1) / sel_rows).tolist()
            for k, value in enumerate(mse):
                checkpoints[k].append(value)
                if value < best[k][0]:
                    best[k] = (value, {n: p[k].detach().clone() for n, p in params.items()}, step)
        if step == settings.steps:
            break
        idx = torch.stack([torch.randint(int(n), (batch,), generator=job.generator)
                           for n, job in zip(rows, jobs)])
        picked = flat_x.index_select(0, (x_start + idx).flatten())
        _set_gradients(forward, backward, params, picked.view(*idx.shape, -1),
                       torch.gather(y, 1, idx))
        optimiser.step()
    if any(kept is None for _, kept, _ in best):  # every selection MSE NaN: nothing to keep
        raise ValueError("train_heads: a head's selection MSE was never finite (too few fit "
                         "rows, or non-finite inputs or targets)")
    with torch.no_grad():
        for job, (_, kept, _) in zip(jobs, best):
            for name, parameter in job.head.named_parameters():
                parameter.copy_(kept[name].mT if name in transposed else kept[name])
    return [(checkpoints[k], best[k][2]) for k in range(len(jobs))]


def _set_gradients(forward, backward, params: dict, x: torch.Tensor, target: torch.Tensor):
    """Every parameter's .grad: that of the heads' summed mean squared errors on (x, target),
    by the written-out backward where there is one (d/d(out): 2 (out - target) / rows), else
    by autograd."""
    if backward is None:
        for parameter in params.values():
            parameter.grad = None
        (forward(params, x).squeeze(-1) - target).pow(2).mean(1).sum().backward()
        return
    saved = []
    with torch.no_grad():
        error = forward(params, x, saved).squeeze(-1).sub_(target)
    grads = backward(params, saved, error.mul_(2.0 / target.shape[1]).unsqueeze(-1))
    for name, parameter in params.items():
        parameter.grad = grads[name]


@dataclass(frozen=True)
class Standardisation:
    """Per-coordinate mean and std of some rows and of their labels: the coordinates every
    label-trained head of the benchmark learns in."""

    x_mean: torch.Tensor
    x_std: torch.Tensor
    y_mean: torch.Tensor
    y_std: torch.Tensor

    @classmethod
    def of(cls, rows: torch.Tensor, values: torch.Tensor) -> Standardisation:
        return cls(rows.mean(0), rows.std(0).clamp_min(1e-12), values.mean(),
                   values.std().clamp_min(1e-12))

    def x(self, rows: torch.Tensor) -> torch.Tensor:
        return (rows - self.x_mean) / self.x_std

    def y(self, values: torch.Tensor) -> torch.Tensor:
        return (values - self.y_mean) / self.y_std


def fitness_head(fit_x: torch.Tensor, fit_y: torch.Tensor, selection_x: torch.Tensor,
                 selection_y: torch.Tensor, settings: HeadSettings, seed: int):
    """The Fitness-Head teacher, frozen, and (its selection-row MSE per evaluation, the step
    kept)."""
    return fitness_heads([(fit_x, fit_y, selection_x, selection_y)], settings, [seed])[0]


def fitness_heads(rows: list[tuple], settings: HeadSettings, seeds: list[int]) -> list:
    """fitness_head of every seed, rows[k] = (fit_x, fit_y, selection_x, selection_y) of seed
    k, trained together by train_heads (each the head it would be alone)."""
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    dim = rows[0][0].shape[1]
    scales = [Standardisation.of(fit_x, fit_y) for fit_x, fit_y, _, _ in rows]
    heads = [nn.Sequential(seeded_linear(dim, dim, g), nn.GELU(), seeded_linear(dim, 1, g))
             for g in generators]
    trained = train_heads([
        HeadJob(head, scale.x(fx), scale.y(fy), scale.x(sx), scale.y(sy), settings, g)
        for head, scale, g, (fx, fy, sx, sy) in zip(heads, scales, generators, rows)])
    built = []
    for head, scale, curve in zip(heads, scales, trained):
        first = head[0]
        with torch.no_grad():  # fold the standardisation: W ((x - m) / s) + b = (W / s) x + b'
            first.bias.sub_(first.weight @ (scale.x_mean / scale.x_std))
            first.weight.div_(scale.x_std)
        built.append((Teacher(_freeze(first), _freeze(head[1:])), curve))
    return built


def teacher_seed(seed: int, name: str) -> int:
    """The seed a linear teacher is drawn or trained with, in the run of seed `seed`."""
    return stage_seed(stage_seed(seed, "teachers"), f"teachers/{name}")


def _random(train_x: torch.Tensor, settings: TeacherSettings, seeds: list[int]) -> list:
    return [Teacher(random_teacher(train_x.shape[1], seed)) for seed in seeds]


def _task_trained(train_x: torch.Tensor, settings: TeacherSettings, seeds: list[int]) -> list:
    return [Teacher(layer, losses=losses)
            for layer, losses in task_trained_teachers(train_x, settings, seeds)]


def _spectral(train_x: torch.Tensor, settings: TeacherSettings, seeds: list[int]) -> list:
    return [Teacher(spectral_teacher(train_x.shape[1], seed=seed, tau=settings.spectral_tau))
            for seed in seeds]


# The linear teachers, in the order the tables and the figure show them: name -> a builder
# (training rows, TeacherSettings, one seed per run) -> one Teacher per seed, every seed's
# built at once (a trained teacher trains them as one stack). A teacher is one entry here; the
# report gives each its colour in turn. The Fitness-Head, built on labels, is added after them.
LINEAR_TEACHERS = {"Random": _random, "Task-Trained": _task_trained, "Spectral": _spectral}


def build_teachers(train_x: torch.Tensor, settings: TeacherSettings, seed: int) -> dict:
    """The linear teachers of the run of seed `seed` (on the CPU, float32)."""
    return build_teachers_of_seeds(train_x, settings, [seed])[0]


def build_teachers_of_seeds(train_x: torch.Tensor, settings: TeacherSettings,
                            seeds: list[int]) -> list[dict[str, Teacher]]:
    """build_teachers of every seed: each registered builder called once with every run's
    seed for it (teacher_seed)."""
    built = [{} for _ in seeds]
    for name, build in LINEAR_TEACHERS.items():
        for teachers, teacher in zip(built, build(train_x, settings,
                                                  [teacher_seed(seed, name) for seed in seeds])):
            teachers[name] = teacher
    return built
