"""Distillation of a low-rank student from a frozen teacher, on one process or many.

Loss (the published Distil-Rank recipe): MSE(student(x), teacher(x)) + alpha * (1 - cos), with
AdamW over mini-batches drawn without replacement, reshuffled every epoch.

With a `readout` (the frozen rest of a head), both outputs pass through it before the loss: the
student is distilled end to end on what the head reads, not on the layer's output.

With held-out rows, the student is evaluated every `eval_every` steps (and before the first) on
rows it never trains on, and the checkpoint with the least held-out MSE is returned. Step 0 is a
candidate, so the result is never worse than its warm start on that held-out data.

With a `patience`, a student with held-out rows stops once that many steps have passed since
its best checkpoint (its later steps could not be chosen anyway once it stops).

One training loop serves every caller. `distill_together` stacks many students (the benchmark
trains every student of a run at once); `distill` is a stack of one, and the API refines with
it. `distill_data_parallel` is the same loop across processes (start them with torchrun): each
process draws batches from its own rows, the gradients are averaged over processes so every
process takes the same AdamW step, and the held-out MSE is summed over every process's held-out
rows before a checkpoint is chosen, so all processes keep the same one. With equal batch sizes it
equals one process distilling on the joined batches (tests/test_distributed.py checks this).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from distil_rank.errors import first_line
from distil_rank.lowrank import LowRankLinear
from distil_rank.optim import Adam
from distil_rank.runtime import stage_seed


@dataclass(frozen=True)
class DistillSettings:
    """One recipe, used by the benchmark's distil_da and by compress_linear(refine_steps=N):
    the published one (AdamW 3e-3 with its default weight decay, batch 64, 1000 steps,
    MSE + 0.1 (1 - cosine)), with a held-out checkpoint every 50 steps and an early stop 200
    steps after the best one when there are held-out rows."""

    steps: int = 1000  # optimiser steps
    lr: float = 3e-3  # AdamW learning rate
    batch_size: int = 64  # rows per step (per process under DDP)
    alpha: float = 0.1  # loss = MSE + alpha * (1 - cosine)
    weight_decay: float = 0.01  # AdamW's default decoupled weight decay
    eval_every: int = 50  # steps between held-out evaluations, when there are held-out rows
    patience: int | None = 200  # stop `patience` steps after the best held-out checkpoint


RECIPE = DistillSettings()  # frozen: safe as a shared default
HOLDOUT_FRACTION = 0.15  # of the calibration rows held out to choose the checkpoint with


@dataclass
class DistillResult:
    student: nn.Module
    losses: list[float]  # training loss per step (this process's batches)
    checkpoints: list[tuple[int, float]] = field(default_factory=list)  # (step, held-out MSE)
    chosen_step: int | None = None  # the step whose weights were kept; None: the last one
    fit_seconds: float = 0.0  # batched: this student's share of its group's wall time
    steps_run: int = 0  # optimiser steps taken before the run ended or stopped early


def distill_loss(pred: torch.Tensor, target: torch.Tensor, alpha) -> torch.Tensor:
    """MSE + alpha (1 - mean cosine) over [rows, features]; leading dimensions (stacked
    students) are kept, one loss each, and alpha may be a tensor of one value per student.
    F.cosine_similarity's value (norms clamped at 1e-8), with its gradient written out: the
    same numbers as autograd through F.cosine_similarity to rounding, in three passes over the
    rows where autograd takes a dozen, the largest cost of a small student's step on a CPU
    (tests/test_distill.py checks both against autograd in float64)."""
    return _DistillLoss.apply(pred, target, torch.as_tensor(alpha, dtype=pred.dtype,
                                                            device=pred.device))


class _DistillLoss(torch.autograd.Function):
    """distill_loss for autograd: _loss_terms forward, _loss_gradient backward. The target and
    alpha get no gradient (the teacher's outputs and a setting)."""

    @staticmethod
    def forward(ctx, pred, target, alpha):
        loss, saved = _loss_terms(pred, target, alpha)
        ctx.save_for_backward(*saved)
        return loss

    @staticmethod
    def backward(ctx, grad):
        return _loss_gradient(ctx.saved_tensors, grad), None, None


def _loss_terms(pred, target, alpha):
    """(MSE + alpha (1 - mean cosine) per student, what _loss_gradient needs)."""
    diff = pred - target
    norm = torch.linalg.vector_norm(pred, dim=-1).clamp_min(COSINE_EPS)
    unit = target / torch.linalg.vector_norm(target, dim=-1, keepdim=True).clamp_min(COSINE_EPS)
    cosine = (pred * unit).sum(-1) / norm  # [..., rows]
    loss = diff.pow(2).mean((-2, -1)) + alpha * (1 - cosine.mean(-1))
    return loss, (diff, pred, unit, norm, cosine, alpha)


def _loss_gradient(saved, grad):
    """d/dpred of MSE + alpha (1 - mean_i cos_i) times `grad`, with cos_i = pred_i . u_i /
    |pred_i| and u_i the unit target row: 2 (pred - target) / (rows features) - alpha / rows
    (u_i - cos_i pred_i / |pred_i|) / |pred_i|."""
    diff, pred, unit, norm, cosine, alpha = saved
    rows, width = pred.shape[-2:]
    scale = (grad * alpha / rows).unsqueeze(-1)  # [..., 1]: d loss / d cos_i
    out = diff * (grad * (2 / (rows * width)))[..., None, None]
    out.addcmul_(unit, (-scale / norm).unsqueeze(-1))
    out.addcmul_(pred, (scale * cosine / norm.square()).unsqueeze(-1))
    return out


COSINE_EPS = 1e-8  # F.cosine_similarity's default eps


def batch_schedule(rows: int, batch_size: int, steps: int,
                   generator: torch.Generator) -> torch.Tensor:
    """Row indices for `steps` batches, [steps, batch]: without replacement within an epoch (a
    permutation per epoch, whole batches only: the rows a batch would take across two epochs
    wait for the next permutation), drawn an epoch at a time."""
    batch_size = min(batch_size, rows)
    per_epoch = rows // batch_size
    orders = [torch.randperm(rows, generator=generator)[:per_epoch * batch_size]
              for _ in range(-(-steps // per_epoch))]
    return torch.cat(orders).view(-1, batch_size)[:steps]


@dataclass
class DistillJob:
    """One student to distil, as data: `distill`'s arguments, so that many train together."""

    teacher: nn.Module
    student: LowRankLinear  # the warm start; left as it is
    train_x: torch.Tensor
    settings: DistillSettings
    seed: int  # seeds this student's batch order
    holdout_x: torch.Tensor | None = None
    readout: nn.Module | None = None  # the frozen rest of a head: distil end to end through it


def distill(teacher: nn.Module, student: nn.Module, train_x: torch.Tensor,
            settings: DistillSettings, *, seed: int, device: torch.device,
            holdout_x: torch.Tensor | None = None, readout: nn.Module | None = None,
            desc: str = "distil") -> DistillResult:
    """Train a copy of `student` to imitate `teacher` (through `readout` when given); teacher,
    student, readout and inputs stay as they were. One student: `distill_together` of one."""
    job = DistillJob(teacher, student, train_x, settings, seed, holdout_x, readout)
    return distill_together([job], device, desc=desc)[0]


def refinement_job(teacher: nn.Module, start: LowRankLinear, fit_x: torch.Tensor,
                   holdout_x: torch.Tensor, *, seed: int,
                   settings: DistillSettings = RECIPE) -> DistillJob:
    """The recipe that the benchmark's distil_da and compress_linear(refine_steps=N) share:
    `start`, a closed form fitted on `fit_x`, distilled on `fit_x`, keeping the checkpoint
    (step 0 included) with the least MSE on `holdout_x`, stopping `settings.patience` steps
    after it. A job, so that the benchmark can train many at once (distill_together)."""
    return DistillJob(teacher, start, fit_x, settings, seed, holdout_x=holdout_x)


def distill_data_parallel(teacher: nn.Module, student: nn.Module, local_x: torch.Tensor,
                          settings: DistillSettings, *, seed: int, device: torch.device,
                          local_holdout_x: torch.Tensor | None = None,
                          readout: nn.Module | None = None) -> DistillResult:
    """`distill` on every process's own rows (an initialised process group is needed: gloo on
    the CPU, nccl on GPUs). Every process starts from process 0's student and returns the same
    one."""
    if not dist.is_initialized():
        raise RuntimeError("distill_data_parallel needs torch.distributed to be initialised "
                           "(start with torchrun)")
    job = DistillJob(teacher, student, local_x, settings, process_seed(seed, dist.get_rank()),
                     local_holdout_x, readout)
    return distill_together([job], device, data_parallel=True)[0]


def process_seed(seed: int, process_rank: int) -> int:
    """The batch-drawing seed of one process under data parallelism."""
    return stage_seed(seed, f"process/{process_rank}")


# ----------------------------------------------------------------------------- many students


def group_key(job: DistillJob) -> tuple:
    """Students that can share one stacked step: same shapes, optimiser settings and loss
    structure (alpha may differ), and the same number of held-out rows."""
    s, st = job.student, job.settings
    readout = None if job.readout is None else (
        repr(job.readout), tuple((k, tuple(v.shape)) for k, v in job.readout.state_dict().items()))
    batch = min(st.batch_size, len(job.train_x))  # batch_schedule's: fewer rows, smaller
    return (s.in_features, s.out_features, s.rank, s.bias is not None, s.down.dtype, st.steps,
            st.lr, batch, st.weight_decay, st.eval_every, st.patience, readout,
            None if job.holdout_x is None else len(job.holdout_x))


def distill_together(jobs: list[DistillJob], device: torch.device, *, cuda_graph: bool = True,
                     data_parallel: bool = False, desc: str = "distil") -> list[DistillResult]:
    """Every job's `distill`, with the students stacked: students grouped by rank and settings
    are trained as one batched model, one fused AdamW over the stacked factors (elementwise, so
    each student's update is its own). Each student keeps its own seeded batch order, its own
    loss (alpha, readout) and its own held-out checkpoint and early stop, all decided on the
    device: nothing is read back to the host inside a step, and only once per evaluation to see
    whether every student of a group has stopped. A stopped student's later steps are never
    used. On CUDA the step is captured once in a CUDA graph and replayed (`cuda_graph=False`,
    another device, or data parallelism runs it eagerly). Results come back in the jobs' order;
    each equals its student trained alone (tests/test_distill.py checks both against a plain
    loop written out in the test)."""
    groups: dict[tuple, list[int]] = {}
    for i, job in enumerate(jobs):
        if not isinstance(job.student, LowRankLinear):
            raise TypeError(f"distill_together trains LowRankLinear students, got "
                            f"{type(job.student).__name__}")
        groups.setdefault(group_key(job), []).append(i)
    results: list[DistillResult | None] = [None] * len(jobs)
    targets: dict = {}  # the teachers' outputs, computed once for every group that needs them
    for members in groups.values():
        group = [jobs[i] for i in members]
        for i, result in zip(members, _train_group(group, device, cuda_graph, data_parallel,
                                                   targets, desc)):
            results[i] = result
    return results


class _Bank:
    """Rows of many tensors in one device tensor, each tensor stored once (by identity)."""

    def __init__(self):
        self.parts, self.offsets, self.size = [], {}, 0

    def add(self, key, make) -> int:
        if key not in self.offsets:
            part = make()
            self.parts.append(part)
            self.offsets[key], self.size = self.size, self.size + len(part)
        return self.offsets[key]

    def tensor(self, device) -> torch.Tensor:
        return torch.cat(self.parts).to(device)


@dataclass
class _Batches:
    """A group's data on the device: every input and teacher output once (the banks), and for
    every student and step the bank rows of its batch; the held-out rows when there are any."""

    x_bank: torch.Tensor
    y_bank: torch.Tensor
    x_rows: torch.Tensor  # [students, steps, batch]
    y_rows: torch.Tensor
    holdout_x: torch.Tensor | None  # [students, rows, in]
    holdout_y: torch.Tensor | None

    @staticmethod
    def rows(bank: torch.Tensor, rows: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        """Every student's batch of the step, [students, batch, features]: one index_select of
        whole bank rows (advanced indexing with a 2-D index took 5 times as long on a CPU)."""
        picked = rows.index_select(1, step).squeeze(1)  # [students, batch]
        return bank.index_select(0, picked.flatten()).view(*picked.shape, bank.shape[-1])


def _batches(jobs: list[DistillJob], device: torch.device, computed: dict) -> _Batches:
    """Every step's batch for every student, drawn ahead from each student's own generator."""
    settings, held = jobs[0].settings, jobs[0].holdout_x is not None
    inputs, targets = _Bank(), _Bank()

    @torch.no_grad()
    def target(key, job, x):
        if key not in computed:
            y = copy.deepcopy(job.teacher).to(device)(x.to(device))
            if job.readout is not None:
                y = copy.deepcopy(job.readout).to(device)(y)
            computed[key] = y.reshape(len(x), -1)
        return computed[key]

    def rows(job, x):  # bank offsets of x and of the teacher's outputs on it
        key = (id(job.teacher), id(job.readout), id(x))
        return (inputs.add(id(x), lambda: x.to(device)),
                targets.add(key, lambda: target(key, job, x)))

    x_rows, y_rows, hx_rows, hy_rows = [], [], [], []
    for job in jobs:
        x_at, y_at = rows(job, job.train_x)
        order = batch_schedule(len(job.train_x), settings.batch_size, settings.steps,
                               torch.Generator().manual_seed(job.seed))
        x_rows.append(order + x_at)
        y_rows.append(order + y_at)
        if held:
            hx_at, hy_at = rows(job, job.holdout_x)
            hx_rows.append(torch.arange(len(job.holdout_x)) + hx_at)
            hy_rows.append(torch.arange(len(job.holdout_x)) + hy_at)
    x_bank, y_bank = inputs.tensor(device), targets.tensor(device)
    return _Batches(x_bank, y_bank, torch.stack(x_rows).to(device),
                    torch.stack(y_rows).to(device),
                    x_bank[torch.stack(hx_rows).to(device)] if held else None,
                    y_bank[torch.stack(hy_rows).to(device)] if held else None)


class _Stack:
    """Many students' factors stacked along a first dimension, as leaf parameters on the device,
    and their batched forward: [students, rows, in] -> [students, rows, out] (of each student's
    own readout, vmapped as one functional module, when the jobs have one).

    The factors are stored transposed, down as [students, in, rank] and up as [students, rank,
    out], the layout in which the products read them: their gradients then come out of the
    backward in the parameters' own layout, where a transposed view made autograd copy both
    every step (an eighth of a rank-80 step on a CPU). `factors(i)` gives student i's back in
    LowRankLinear's layout."""

    def __init__(self, jobs: list[DistillJob], device: torch.device, data_parallel: bool):
        def stacked(name):
            values = [getattr(job.student, name) for job in jobs]
            if values[0] is None:
                return None
            values = [v.detach().mT if v.dim() == 2 else v.detach() for v in values]
            return nn.Parameter(torch.stack(values).to(device))

        self.count = len(jobs)
        self.down_t, self.up_t, self.bias = stacked("down"), stacked("up"), stacked("bias")
        self.params = [p for p in (self.down_t, self.up_t, self.bias) if p is not None]
        if data_parallel:  # every process starts from process 0's students
            for p in self.params:
                dist.broadcast(p.data, src=0)
        self.dtype = self.down_t.dtype
        self.alpha = torch.tensor([job.settings.alpha for job in jobs], dtype=self.dtype,
                                  device=device)
        self.readout = None
        if jobs[0].readout is not None:
            state = torch.func.stack_module_state([job.readout for job in jobs])
            self.state = tuple({k: v.to(device) for k, v in part.items()} for part in state)
            base = copy.deepcopy(jobs[0].readout).to("meta")
            self.readout = torch.vmap(
                lambda p, b, h: torch.func.functional_call(base, (p, b), (h,)))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        low = torch.bmm(x, self.down_t)
        hidden = torch.bmm(low, self.up_t) if self.bias is None else torch.baddbmm(
            self.bias.unsqueeze(1), low, self.up_t)
        if self.readout is None:
            return hidden
        return self.readout(*self.state, hidden).reshape(self.count, len(x[0]), -1)

    @torch.no_grad()
    def loss_and_grads(self, x: torch.Tensor, y: torch.Tensor):
        """Each student's distill_loss on its batch, and the gradient of their sum for every
        parameter (as `params`), the backward written out for students without a readout: the
        products autograd takes, without its bookkeeping (half of a small student's step on a
        CPU)."""
        low = torch.bmm(x, self.down_t)
        out = torch.bmm(low, self.up_t) if self.bias is None else torch.baddbmm(
            self.bias.unsqueeze(1), low, self.up_t)
        loss, saved = _loss_terms(out, y, self.alpha)
        grad = _loss_gradient(saved, torch.ones_like(loss))
        grads = [torch.bmm(x.mT, torch.bmm(grad, self.up_t.mT)), torch.bmm(low.mT, grad)]
        return loss, grads + ([grad.sum(1)] if self.bias is not None else [])

    @staticmethod
    def factors(values: list[torch.Tensor], i: int) -> list[torch.Tensor]:
        """Student i's down, up (and bias) from stacked values laid out as `params`."""
        return [v[i].mT if v.dim() == 3 else v[i] for v in values]


class _Steps:
    """The stack's optimiser steps, each reading its batch by a step counter kept on the device,
    so that a step reads nothing back to the host: run eagerly, or captured once in a CUDA graph
    and replayed. Under data parallelism the gradients are averaged over processes first."""

    def __init__(self, stack: _Stack, data: _Batches, settings: DistillSettings,
                 device: torch.device, use_graph: bool, data_parallel: bool):
        self.stack, self.data, self.data_parallel = stack, data, data_parallel
        self.use_graph, self.graph, self.done = use_graph, None, 0
        # eager steps of students without a readout take their backward written out; a CUDA
        # graph replays autograd's (it has no per-step bookkeeping to save)
        self.written_out = stack.readout is None and not use_graph
        self.optimiser = Adam(stack.params, lr=settings.lr, weight_decay=settings.weight_decay,
                              decoupled=True, fused=True)  # AdamW's fused kernel
        self.losses = torch.zeros(stack.count, settings.steps, dtype=stack.dtype,
                                  device=device)
        self.counter = torch.zeros(1, dtype=torch.long, device=device)

    def step(self) -> None:
        data, counter = self.data, self.counter
        x = data.rows(data.x_bank, data.x_rows, counter)
        y = data.rows(data.y_bank, data.y_rows, counter)
        if self.written_out:
            loss, grads = self.stack.loss_and_grads(x, y)
            for p, grad in zip(self.stack.params, grads):
                p.grad = grad
        else:
            loss = distill_loss(self.stack(x), y, self.stack.alpha)  # [students]
            loss.sum().backward()  # the students share no parameter: each its own gradient
        if self.data_parallel:  # the mean gradient over processes, as DDP takes
            for p in self.stack.params:
                dist.all_reduce(p.grad)
                p.grad /= dist.get_world_size()
        self.optimiser.step()
        self.losses.index_copy_(1, counter, loss.detach().unsqueeze(1))
        counter.add_(1)

    def run_to(self, at: int) -> None:
        """Steps until `at` have run; the capture takes WARMUP_STEPS eager steps of its own."""
        while self.done < at:
            if self.use_graph and self.graph is None and at - self.done > WARMUP_STEPS:
                self.graph = _capture(self.step, self.optimiser)
                self.done += WARMUP_STEPS
                self.use_graph = self.graph is not None  # a failed capture: eager from here on
            elif self.graph is None:
                self.optimiser.zero_grad(set_to_none=True)
                self.step()
                self.done += 1
            else:
                self.graph.replay()
                self.done += 1


class _Checkpoints:
    """Every student's held-out MSE at each evaluation, its best checkpoint and its early stop,
    as [students] tensors updated on the device."""

    def __init__(self, stack: _Stack, data: _Batches, settings: DistillSettings,
                 evaluations: int, device: torch.device, data_parallel: bool):
        count, dtype = stack.count, stack.dtype
        self.stack, self.data, self.settings = stack, data, settings
        self.data_parallel = data_parallel
        self.history = torch.full((count, evaluations), math.nan, dtype=dtype, device=device)
        self.best = [p.detach().clone() for p in stack.params]
        self.best_mse = torch.full((count,), math.inf, dtype=dtype, device=device)
        self.best_step = torch.zeros(count, dtype=torch.long, device=device)
        self.stopped_at = torch.full((count,), settings.steps, dtype=torch.long, device=device)
        self.active = torch.ones(count, dtype=torch.bool, device=device)

    @torch.no_grad()
    def evaluate(self, k: int, at: int) -> bool:
        """The held-out MSE at step `at`, evaluation `k`; True while some student still trains."""
        hx, hy, active = self.data.holdout_x, self.data.holdout_y, self.active
        error = torch.stack([(self.stack(hx) - hy).pow(2).sum((1, 2)).double(),
                             torch.full((self.stack.count,), float(hy[0].numel()),
                                        device=hy.device, dtype=torch.float64)])
        if self.data_parallel:  # every process's held-out rows: all choose the same checkpoint
            dist.all_reduce(error)
        mse = (error[0] / error[1]).to(self.best_mse.dtype)
        self.history[:, k] = torch.where(active, mse, self.history[:, k])
        better = active & (mse < self.best_mse)
        self.best_mse.copy_(torch.where(better, mse, self.best_mse))
        self.best_step.copy_(torch.where(better, at, self.best_step))
        for kept, p in zip(self.best, self.stack.params):
            kept.copy_(torch.where(better.view(-1, *[1] * (p.dim() - 1)), p, kept))
        if self.settings.patience is None:
            return True
        stop = active & (at - self.best_step >= self.settings.patience)
        self.stopped_at.copy_(torch.where(stop, at, self.stopped_at))
        active.copy_(active & ~stop)
        return bool(active.any())  # the one read-back, once per evaluation


def _evaluation_steps(settings: DistillSettings, held: bool) -> list[int]:
    """The steps after which a student is evaluated (0 and the last included); without held-out
    rows, only the end."""
    if not held:
        return [settings.steps]
    every = settings.eval_every
    return sorted({0, settings.steps} | set(range(every, settings.steps, every)))


def _train_group(jobs: list[DistillJob], device: torch.device, cuda_graph: bool,
                 data_parallel: bool, computed: dict, desc: str) -> list[DistillResult]:
    start = time.perf_counter()
    settings, held = jobs[0].settings, jobs[0].holdout_x is not None
    data = _batches(jobs, device, computed)
    stack = _Stack(jobs, device, data_parallel)
    use_graph = cuda_graph and device.type == "cuda" and not data_parallel
    steps = _Steps(stack, data, settings, device, use_graph, data_parallel)
    evals = _evaluation_steps(settings, held)
    checkpoints = _Checkpoints(stack, data, settings, len(evals), device, data_parallel)
    if held:
        checkpoints.evaluate(0, 0)
    for k, at in enumerate(tqdm(evals[1:] if held else evals, desc=desc, leave=False,
                                disable=None), start=1):
        steps.run_to(at)
        if held and not checkpoints.evaluate(k, at):
            break
    return _results(jobs, device, stack, steps, checkpoints if held else None, evals,
                    (time.perf_counter() - start) / len(jobs))


def _results(jobs, device, stack: _Stack, steps: _Steps, checkpoints: _Checkpoints | None,
             evals: list[int], share: float) -> list[DistillResult]:
    """Each job's student with its chosen weights (the best held-out checkpoint, else the last
    step's), its losses and checkpoints up to the step it stopped at."""
    held = checkpoints is not None
    chosen = checkpoints.best if held else stack.params
    losses = steps.losses.cpu()
    history = checkpoints.history.cpu().tolist() if held else None
    ran = checkpoints.stopped_at.tolist() if held else [len(steps.losses[0])] * stack.count
    chosen_steps = checkpoints.best_step.tolist() if held else None
    results = []
    for i, job in enumerate(jobs):
        module = copy.deepcopy(job.student).to(device)
        with torch.no_grad():
            for p, value in zip(module.parameters(), _Stack.factors(chosen, i)):
                p.copy_(value)
        ran_i = min(ran[i], steps.done)
        checkpoints_i = [(at, m) for at, m in zip(evals, history[i]) if at <= ran_i] \
            if held else []
        results.append(DistillResult(module.eval().requires_grad_(False),
                                     losses[i, :ran_i].tolist(), checkpoints_i,
                                     chosen_steps[i] if held else None, share, ran_i))
    return results


WARMUP_STEPS = 3  # eager steps on a side stream before capture (optimiser state, workspaces)


def _capture(step, optimiser) -> torch.cuda.CUDAGraph | None:
    """Run WARMUP_STEPS real steps on a side stream, then capture one step as a CUDA graph
    (PyTorch's whole-network capture recipe): gradients set to None first, so that backward
    allocates them from the graph's pool, and replay overwrites them."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(WARMUP_STEPS):
            optimiser.zero_grad(set_to_none=True)
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    optimiser.zero_grad(set_to_none=True)
    try:  # capture runs nothing: on failure no state has moved, and the loop goes on eagerly
        with torch.cuda.graph(graph):
            step()
    except RuntimeError as err:
        warnings.warn(f"CUDA-graph capture of the training step failed, training eagerly: "
                      f"{first_line(err)}", stacklevel=2)
        return None
    return graph
