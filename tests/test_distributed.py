"""Two processes on loopback (gloo), started with torchrun, against one process."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from conftest import correlated_inputs
from distil_rank.calibrate import accumulate_shards, load_moments
from distil_rank.distill import distill_loss
from distil_rank.distributed import rank_generator
from distil_rank.lowrank import LowRankLinear, compress_svd, input_moments


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args, root, nproc=2):
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1",
               PYTHONPATH=str(root))
    for attempt in range(3):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
               "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1",
               "--master-port", str(free_port()), *args]
        done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=240)
        # another process may take the free port between our check and torchrun's bind
        if done.returncode == 0 or "address already in use" not in done.stderr.lower():
            break
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def write_shards(folder, seed=0):
    x = correlated_inputs(2300, 24, seed=seed, mean_scale=50.0).float()
    bounds = [0, 300, 1100, 1150, 2300]  # uneven shards, one of them small
    for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
        if i == 2:
            torch.save({"embeddings": x[a:b]}, folder / f"shard{i}.pt")
        else:
            np.save(folder / f"shard{i}.npy", x[a:b].numpy())
    return x


def test_two_process_calibration_equals_single_process(tmp_path, root):
    x = write_shards(tmp_path)
    pattern = str(tmp_path / "shard*")
    torchrun(["-m", "distil_rank.calibrate", "--shards", pattern, "--out",
              str(tmp_path / "two.pt"), "--batch-rows", "256"], root)
    single = accumulate_shards(sorted(str(p) for p in tmp_path.glob("shard*")), 256).moments()
    two = load_moments(tmp_path / "two.pt")
    reference = input_moments(x)
    assert two.count == single.count == 2300
    torch.testing.assert_close(two.mean, single.mean, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(two.covariance, single.covariance, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(two.covariance, reference.covariance, rtol=1e-8, atol=1e-9)


def test_data_parallel_distillation_equals_one_process_on_the_joined_batches(tmp_path, root):
    torch.manual_seed(0)
    dim, rank, batch, steps = 16, 3, 8, 25
    teacher = nn.Linear(dim, dim)
    x = correlated_inputs(400, dim, seed=3, mean_scale=1.0).float()
    shards = [x[:250], x[250:]]
    student = compress_svd(teacher, rank)
    settings = dict(steps=steps, lr=3e-3, batch_size=batch, alpha=0.1, weight_decay=0.01, seed=5)
    torch.save({"teacher": teacher.state_dict(), "teacher_shape": (dim, dim),
                "student": student.state_dict(), "student_shape": (dim, dim, rank),
                "x": shards, **settings}, tmp_path / "setup.pt")
    torchrun([str(root / "tests" / "ddp_worker.py"), str(tmp_path)], root)
    s0 = torch.load(tmp_path / "student_0.pt", weights_only=True)
    s1 = torch.load(tmp_path / "student_1.pt", weights_only=True)
    for key in s0:
        torch.testing.assert_close(s0[key], s1[key], rtol=0, atol=0)

    # The reference: one process, a plain AdamW loop on each step's two batches joined.
    reference = LowRankLinear(dim, dim, rank)
    reference.load_state_dict(student.state_dict())
    optimiser = torch.optim.AdamW(reference.parameters(), lr=3e-3, weight_decay=0.01)
    generators = [rank_generator(5, r) for r in range(2)]
    with torch.no_grad():
        targets = [teacher(s) for s in shards]
    for _ in range(steps):
        idx = [torch.randint(s.shape[0], (batch,), generator=g) for s, g in zip(shards, generators)]
        inputs = torch.cat([s[i] for s, i in zip(shards, idx)])
        wanted = torch.cat([t[i] for t, i in zip(targets, idx)])
        loss = distill_loss(reference(inputs), wanted, 0.1)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(s0[key], value.detach(), rtol=1e-5, atol=1e-6)
