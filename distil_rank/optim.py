"""Adam and AdamW steps without `torch.optim`.

Constructing any `torch.optim` optimiser imports `torch._dynamo` (its methods are wrapped to
disable compilation), which costs about 1.2 s per process on a 2-core machine: a sixth of a
`--quick` run, paid again by every command and test process that trains. `Adam` takes the same
steps as `torch.optim.Adam` / `AdamW` and nothing else: with `fused=True` it calls the same fused
kernel (`torch._fused_adam_` / `torch._fused_adamw_`, which a CUDA graph can capture), otherwise
it runs the same in-place operations as their single-tensor loop, the path PyTorch takes for CPU
tensors. tests/test_optim.py checks both against `torch.optim`, bit for bit.
"""

from __future__ import annotations

import torch


class Adam:
    """Adam over `params` (AdamW's decoupled weight decay with `decoupled=True`); no amsgrad,
    no maximize, no complex parameters. A parameter without a gradient is left as it is."""

    def __init__(self, params, lr: float, weight_decay: float = 0.0, decoupled: bool = False,
                 fused: bool = False, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        self.params = list(params)
        if any(p.is_complex() for p in self.params):
            raise ValueError("Adam: complex parameters are not supported")
        self.lr, self.weight_decay, self.decoupled, self.fused = lr, weight_decay, decoupled, fused
        self.betas, self.eps = betas, eps
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format)
                        for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format)
                           for p in self.params]
        # the fused kernel reads its step counts from the device (no host sync under a graph)
        self.steps = [torch.zeros((), dtype=torch.float32, device=p.device)
                      for p in self.params] if fused else []
        self.counts = [0] * len(self.params)  # the single-tensor loop's, on the host

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        if self.fused:
            self._fused([[seq[i] for i in live] for seq in
                         (self.params, self.exp_avg, self.exp_avg_sq, self.steps)])
        else:
            self._single(live)

    def _fused(self, tensors) -> None:
        params, exp_avg, exp_avg_sq, steps = tensors
        groups: dict[tuple, list[int]] = {}  # the kernel takes one device and dtype per call
        for i, p in enumerate(params):
            groups.setdefault((p.device, p.dtype), []).append(i)
        kernel = torch._fused_adamw_ if self.decoupled else torch._fused_adam_
        for index in groups.values():
            group_steps = [steps[i] for i in index]
            torch._foreach_add_(group_steps, 1)
            kernel([params[i] for i in index], [params[i].grad for i in index],
                   [exp_avg[i] for i in index], [exp_avg_sq[i] for i in index], [],
                   group_steps, amsgrad=False, lr=self.lr, beta1=self.betas[0],
                   beta2=self.betas[1], weight_decay=self.weight_decay, eps=self.eps,
                   maximize=False, grad_scale=None, found_inf=None)

    def _single(self, live: list[int]) -> None:
        beta1, beta2 = self.betas
        for i in live:
            param, grad = self.params[i], self.params[i].grad
            exp_avg, exp_avg_sq = self.exp_avg[i], self.exp_avg_sq[i]
            self.counts[i] += 1
            step = float(self.counts[i])
            step_size = self.lr / (1 - beta1 ** step)
            correction2_sqrt = (1 - beta2 ** step) ** 0.5
            if self.weight_decay != 0:
                if self.decoupled:
                    param.mul_(1 - self.lr * self.weight_decay)
                else:
                    grad = grad.add(param, alpha=self.weight_decay)
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (exp_avg_sq.sqrt() / correction2_sqrt).add_(self.eps)
            param.addcdiv_(exp_avg, denom, value=-step_size)
