"""Two processes on loopback (gloo), started with torchrun, against one process."""

import copy
import os
import socket
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import torch
from torch import nn

from conftest import correlated_inputs, epoch_batches
from distil_rank.calibrate import accumulate_shards
from distil_rank.distill import DistillSettings, distill_loss, process_seed
from distil_rank.lowrank import LowRankLinear, compress_svd
from distil_rank.moments import input_moments, load_moments


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args, root, nproc=2):
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    for _attempt in range(3):
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
    dim, rank = 16, 3
    settings = DistillSettings(steps=30, lr=2e-2, batch_size=8, alpha=0.1, weight_decay=0.01,
                               eval_every=5)
    teacher = nn.Linear(dim, dim)
    x = correlated_inputs(500, dim, seed=3, mean_scale=1.0).float()
    shards, holdouts = [x[:250], x[250:400]], [x[400:440], x[440:]]  # unequal on purpose
    student = compress_svd(teacher, rank)
    torch.save({"teacher": teacher.state_dict(), "teacher_shape": (dim, dim),
                "student": student.state_dict(), "student_shape": (dim, dim, rank),
                "x": shards, "holdout": holdouts, "settings": asdict(settings), "seed": 5},
               tmp_path / "setup.pt")
    torchrun([str(root / "tests" / "ddp_worker.py"), str(tmp_path)], root)
    results = [torch.load(tmp_path / f"student_{p}.pt", weights_only=True) for p in range(2)]
    for key in results[0]["state"]:
        torch.testing.assert_close(results[0]["state"][key], results[1]["state"][key],
                                   rtol=0, atol=0)
    assert results[0]["chosen_step"] == results[1]["chosen_step"]

    # The reference: one process, a plain AdamW loop on each step's two batches joined, and the
    # checkpoint with the least MSE on the joined held-out rows.
    reference = LowRankLinear(dim, dim, rank)
    reference.load_state_dict(student.state_dict())
    optimiser = torch.optim.AdamW(reference.parameters(), lr=settings.lr,
                                  weight_decay=settings.weight_decay)
    streams = [epoch_batches(s.shape[0], settings.batch_size,
                             torch.Generator().manual_seed(process_seed(5, p)))
               for p, s in enumerate(shards)]
    hx = torch.cat(holdouts)
    with torch.no_grad():
        targets, hy = [teacher(s) for s in shards], teacher(hx)

    def held_out_mse():
        with torch.no_grad():
            return torch.nn.functional.mse_loss(reference(hx), hy).item()

    checkpoints = [(0, held_out_mse())]
    best = (checkpoints[0][1], 0, copy.deepcopy(reference.state_dict()))
    for step in range(1, settings.steps + 1):
        idx = [next(stream) for stream in streams]
        inputs = torch.cat([s[i] for s, i in zip(shards, idx)])
        wanted = torch.cat([t[i] for t, i in zip(targets, idx)])
        loss = distill_loss(reference(inputs), wanted, settings.alpha)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % settings.eval_every == 0:
            checkpoints.append((step, held_out_mse()))
            if checkpoints[-1][1] < best[0]:
                best = (checkpoints[-1][1], step, copy.deepcopy(reference.state_dict()))
    torch.testing.assert_close(results[0]["checkpoints"], torch.tensor(checkpoints),
                               rtol=1e-4, atol=1e-6)
    assert results[0]["chosen_step"] == best[1]
    for key, value in best[2].items():
        torch.testing.assert_close(results[0]["state"][key], value.detach(), rtol=1e-5, atol=1e-6)
