"""A hostile user's sweep of every command, independent of the test suite: each case runs as a
user would type it, in its own process, against files built here (a tiny randomly initialised
ESM-2 stands in for real weights, which cannot be had offline).

    python scripts/hostile.py                 # 223 cases, about 10 minutes on 2 cores
    python scripts/hostile.py --only splits   # the cases whose name holds "splits"
    python scripts/hostile.py --interrupts    # SIGINT / SIGTERM at each file event of a write
    python scripts/hostile.py --api           # the library's calls with wrong arguments

A case passes when it exits 0 with outputs free of NaN, or exits 2 with exactly one `error:`
line, no traceback, and its --out as it was. An interrupt passes when --out then holds the old
pair or a new complete one and nothing else, and the next run into it succeeds. Exit 1 when
any case fails."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from distil_rank.errors import OneLineParser

ROOT = Path(__file__).resolve().parents[1]

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
PY = sys.executable
AMINO = list("MKVLAGHSTEDRPQNFYWCI")


class Evil:  # unpickling it would run a command: no reader may do so
    def __reduce__(self):
        return (os.system, ("touch hostile-pwned",))


def build_tiny_esm(folder: Path) -> Path:
    """The tests' tiny randomly initialised ESM-2 (tests/conftest.py), loaded from its file."""
    spec = importlib.util.spec_from_file_location("conftest", ROOT / "tests" / "conftest.py")
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    return conftest.build_tiny_esm(folder)


def fasta(rng, n: int, length: int = 12) -> str:
    return "".join(f">p{i}\n{''.join(rng.choice(AMINO, length))}\n" for i in range(n))


class Sweep:
    def __init__(self, work: Path):
        self.work, self.cases = work, []
        rng = np.random.default_rng(0)
        (work / "esm").mkdir()
        (work / "empty").mkdir()
        self.esm = build_tiny_esm(work / "esm")
        train = torch.load(ROOT / "embeddings_train.pt", weights_only=True)
        val = torch.load(ROOT / "embeddings_val.pt", weights_only=True)
        self.train = {k: v[:600] if isinstance(v, torch.Tensor | list) else v
                      for k, v in train.items()}
        self.t = self.save("t.pt", self.train)
        self.v = self.save("v.pt", {k: v[:200] if isinstance(v, torch.Tensor | list) else v
                                    for k, v in val.items()})
        self.fa = self.text("good.fa", fasta(rng, 40))
        (work / "evil.pt").write_bytes(pickle.dumps(Evil()))
        self.rng = rng

    def save(self, name, obj) -> str:
        torch.save(obj, self.work / name)
        return str(self.work / name)

    def text(self, name, content) -> str:
        path = self.work / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
        return str(path)

    def with_(self, **changes) -> dict:
        return {**self.train, **changes}

    def case(self, name: str, argv: list, cwd: str | None = None) -> None:
        self.cases.append((name, [str(a) for a in argv], cwd))


def main_cases(s: Sweep) -> None:
    run = [PY, ROOT / "main.py", "--quick"]
    files = ["--train", s.t, "--val", s.v]
    flags = {"--rank": ["0", "-1", "321", "abc", "1.5", "320", "1"],
             "--steps": ["0", "-5", "x", "1"],
             "--seeds": ["0", "-1", "1", "10**9", "99999999999"],
             "--seed": ["-1", "2**70", "18446744073709551616", "nan"],
             "--threads": ["0", "-2", "1000", "two"],
             "--device": ["cuda", "cuda:7", "tpu", "mps", ""], "--teacher-init": ["bogus"],
             "--preset": ["nope"], "--data": ["fake"]}
    for flag, values in flags.items():
        for value in values:
            s.case(f"main {flag} {value}", run + files + [flag, value])
    x, fitness, position = (s.train[k] for k in ("embeddings", "fitness", "position"))
    small = {n: {k: v[:n] if isinstance(v, torch.Tensor | list) else v
                 for k, v in s.train.items()} for n in (1, 2, 5)}
    tampered = {
        "nan": s.with_(embeddings=torch.full_like(x, math.nan)),
        "inf row": s.with_(embeddings=torch.cat([x[:-1], torch.full((1, x.shape[1]), math.inf)])),
        "int": s.with_(embeddings=x.long()), "f16": s.with_(embeddings=x.half()),
        "f64": s.with_(embeddings=x.double()), "1d": s.with_(embeddings=x[0]),
        "3d": s.with_(embeddings=x[None]), "empty": s.with_(embeddings=x[:0]),
        "one row": small[1], "two rows": small[2], "five rows": small[5],
        "wrong dim": s.with_(embeddings=x[:, :100]), "no embeddings key": {"x": x},
        "list": [1, 2, 3], "string": "hello", "fitness short": s.with_(fitness=fitness[:10]),
        "fitness nan": s.with_(fitness=torch.full_like(fitness, math.nan)),
        "fitness const": s.with_(fitness=torch.ones_like(fitness)),
        "fitness str": s.with_(fitness="x"),
        "position nan": s.with_(position=torch.full_like(position.double(), math.nan)),
        "complex": s.with_(embeddings=x.to(torch.complex64)), "bool": s.with_(embeddings=x > 0),
        "constant": s.with_(embeddings=torch.ones_like(x)),
        "zeros": s.with_(embeddings=torch.zeros_like(x)), "tensor only": x,
        "huge values": s.with_(embeddings=x * 1e30)}
    for name, obj in tampered.items():
        path = s.save(f"main_{name.replace(' ', '_')}.pt", obj)
        s.case(f"main train={name}", run + ["--train", path, "--val", s.v])
        s.case(f"main val={name}", run + ["--train", s.t, "--val", path])
    np.save(s.work / "x.npy", x.numpy())
    np.savez(s.work / "x.npz", embeddings=x.numpy())
    raw = {"evil pickle": s.work / "evil.pt", "empty file": s.text("empty.pt", b""),
           "text": s.text("text.pt", b"hello"),
           "truncated": s.text("cut.pt", Path(s.t).read_bytes()[:1000]),
           "npy": s.work / "x.npy", "npz": s.work / "x.npz", "csv": s.text("x.csv", "1,2\n"),
           "folder": s.work, "missing": s.work / "nope.pt"}
    for name, path in raw.items():
        s.case(f"main train file {name}", run + ["--train", path, "--val", s.v])
    s.case("main only train given", run + ["--train", s.t])
    s.case("main data real from an empty folder", run + ["--data", "real"], cwd=s.work / "empty")
    s.case("main default from another folder", run, cwd=str(s.work / "empty"))
    s.case("main out is a file", run + files + ["--out", s.fa])
    s.case("main out inside a file", run + files + ["--out", s.fa + "/x"])
    s.case("main out under /proc", run + files + ["--out", "/proc/x"])
    s.case("main the same file twice", run + ["--train", s.t, "--val", s.t])
    s.case("main unknown flag", run + ["--bogus"])
    s.case("main synthetic", run + ["--data", "synthetic", "--seeds", "1"])


FASTAS = {
    "empty": "", "binary": b"\x00\x01\xff" * 30, "no header": "MKVL\n",
    "star": ">a\nMK*VL\n>b\nMKVLA\n>c\nMKVLAAA\n>d\nKVLAG\n",
    "dup ids": ">a\nMKVL\n>a\nMKVA\n>b\nMKKK\n>c\nAAAA\n", "one": ">a\nMKVLAG\n",
    "two": ">a\nMKVLAG\n>b\nMKVLAA\n", "empty seq": ">a\n\n>b\nMKVL\n>c\nMKV\n>d\nMK\n",
    "digits": ">a\nMK1VL\n>b\nMKVL\n>c\nMKV\n>d\nMKA\n",
    "same": ">a\nMKVL\n>b\nMKVL\n>c\nMKVL\n>d\nMKVL\n>e\nMKVL\n"}


def model_cases(s: Sweep) -> None:
    compress = [PY, "-m", "distil_rank.compress", "--model", s.esm]
    embed = [PY, "-m", "distil_rank.embed", "--model", s.esm]
    fastas = {**FASTAS, "lower": fasta(s.rng, 10).lower(), "long": fasta(s.rng, 10, 200),
              "windows": fasta(s.rng, 10).replace("\n", "\r\n"),
              "utf16": fasta(s.rng, 10).encode("utf-16")}
    for name, content in fastas.items():
        path, key = s.text(f"{name.replace(' ', '_')}.fa", content), name.replace(" ", "_")
        s.case(f"compress fasta {name}", compress + ["--fasta", path, "--budget", "0.5",
                                                    "--out", s.work / f"c_{key}"])
        s.case(f"embed fasta {name}", embed + ["--fasta", path, "--out", s.work / f"e_{key}.pt"])
    flags = {"--budget": ["0", "1", "1.5", "-0.1", "nan", "inf", "x", "1e-9"],
             "--holdout": ["0", "1", "0.99", "-1", "nan", "0.5"],
             "--max-tokens": ["0", "3", "1", "-1", "14", "100000"], "--objective": ["both"],
             "--device": ["cuda", "xla"], "--seed": ["-1", "2**80", "9" * 23],
             "--threads": ["0"]}
    for flag, values in flags.items():
        for value in values:
            argv = ["--fasta", s.fa, "--budget", value if flag == "--budget" else "0.5"]
            argv += [] if flag == "--budget" else [flag, value]
            s.case(f"compress {flag} {value}", compress + argv + ["--out",
                                                                  s.work / f"c{flag}{value}"])
    good = ["--fasta", s.fa, "--budget", "0.5", "--out"]
    s.case("compress fasta is a folder", compress + ["--fasta", s.work, "--budget", "0.5",
                                                    "--out", s.work / "cd"])
    s.case("compress model an empty folder", [PY, "-m", "distil_rank.compress", "--model",
                                              s.work / "empty"] + good + [s.work / "cme"])
    s.case("compress model a file", [PY, "-m", "distil_rank.compress", "--model", s.fa] + good
           + [s.work / "cmf"])
    s.case("compress model unknown name", [PY, "-m", "distil_rank.compress", "--model",
                                           "esm2_t99_1T"] + good + [s.work / "cmu"])
    s.case("compress out is a file", compress + good + [s.fa])
    s.case("compress out the model's folder", compress + good + [s.esm])
    s.case("compress", compress + good + [s.work / "c_ok"])
    s.case("compress again into the same out", compress + good + [s.work / "c_ok"])
    embed_flags = {"--layer": ["-1", "3", "99", "x"], "--max-tokens": ["0", "5"],
                   "--dtype": ["float16", "bfloat16", "int8"],
                   "--split": ["0", "1", "0.5", "-1", "nan", "0.999"], "--seed": ["-3"]}
    for flag, values in embed_flags.items():
        for value in values:
            out = s.work / f"e{flag}{value}{'' if flag == '--split' else '.pt'}"
            s.case(f"embed {flag} {value}", embed + ["--fasta", s.fa, "--out", out, flag, value])
    s.case("embed long, --on-long reject", embed + ["--fasta", s.work / "long.fa", "--out",
                                                    s.work / "el.pt", "--on-long", "reject"])
    s.case("embed out in a missing folder", embed + ["--fasta", s.fa, "--out",
                                                     s.work / "nodir" / "x.pt"])
    s.case("embed out is a folder", embed + ["--fasta", s.fa, "--out", s.work])
    rows = [f"p{i}" for i in range(40)]
    labels = {"nan": "".join(f"{r},nan\n" for r in rows), "missing": "p0,1\n",
              "dup": "p0,1\n" + "".join(f"{r},1\n" for r in rows),
              "text": "".join(f"{r},x\n" for r in rows),
              "extra ids": "".join(f"p{i},{i}\n" for i in range(60)),
              "ok": "".join(f"{r},{i}\n" for i, r in enumerate(rows))}
    for name, body in {**{k: "id,fitness\n" + v for k, v in labels.items()},
                       "semicolon": "id;fitness\n" + "".join(f"{r};1\n" for r in rows),
                       "no header": "".join(f"{r},1\n" for r in rows), "empty": ""}.items():
        path = s.text(f"labels_{name.replace(' ', '_')}.csv", body)
        s.case(f"embed labels {name}", embed + ["--fasta", s.fa, "--labels", path, "--out",
                                                s.work / f"el_{name.replace(' ', '_')}.pt"])


def calibrate_and_splits_cases(s: Sweep) -> None:
    g = np.random.default_rng(1)
    shard = {"ok": g.random((50, 8), np.float32), "wide": g.random((50, 9), np.float32),
             "empty": np.zeros((0, 8), np.float32), "one row": g.random((1, 8), np.float32),
             "strings": np.array(["a", "b"]), "3d": g.random((4, 5, 8), np.float32)}
    shard["nan"] = shard["ok"].copy()
    shard["nan"][3, 3] = np.nan
    paths = {}
    for name, array in shard.items():
        paths[name] = s.work / f"shard_{name.replace(' ', '_')}.npy"
        np.save(paths[name], array)
    ok = paths["ok"]
    sets = {**{k: [p] for k, p in paths.items()}, "mismatch": [ok, paths["wide"]],
            "twice": [ok, ok], "no match": [s.work / "zzz*.npy"], "evil": [s.work / "evil.pt"],
            "text": [s.work / "text.pt"], "folder": [s.work]}
    calibrate = [PY, "-m", "distil_rank.calibrate", "--shards"]
    for name, shards in sets.items():
        s.case(f"calibrate {name}", calibrate + shards + ["--out", s.work / f"k_{name}.pt"])
    s.case("calibrate --batch-rows 0", calibrate + [ok, "--out", s.work / "kb.pt",
                                                    "--batch-rows", "0"])
    s.case("calibrate out is a folder", calibrate + [ok, "--out", s.work])
    fitness, position = s.train["fitness"], s.train["position"]
    every7 = torch.arange(len(position)) % 7 == 0
    data = {"pos nan": s.with_(position=torch.where(every7, math.nan, position.double())),
            "pos negative": s.with_(position=position - 1000),
            "pos float": s.with_(position=position.double() + 0.5),
            "pos one value": s.with_(position=torch.zeros_like(position)),
            "pos two values": s.with_(position=position % 2),
            "pos huge": s.with_(position=position.long() * 10**15),
            "no position": {k: v for k, v in s.train.items() if k != "position"},
            "no fitness": {k: v for k, v in s.train.items() if k != "fitness"},
            "fitness const": s.with_(fitness=torch.ones_like(fitness)),
            "fitness inf": s.with_(fitness=torch.where(every7, math.inf, fitness)),
            "tiny": {k: v[:8] if isinstance(v, torch.Tensor | list) else v
                     for k, v in s.train.items()}, "ok": s.train}
    splits = [PY, "-m", "distil_rank.benchmark.splits", "--quick"]
    for name, obj in data.items():
        key = name.replace(" ", "_")
        s.case(f"splits {name}", splits + ["--data", s.save(f"splits_{key}.pt", obj), "--out",
                                           s.work / f"s_{key}"])
    s.case("splits the same file twice", splits + ["--data", s.t, s.t, "--out", s.work / "s2"])
    s.case("splits missing file", splits + ["--data", s.work / "nope.pt", "--out", s.work / "s3"])
    s.case("splits from an empty folder", splits + ["--out", s.work / "s4"], cwd=s.work / "empty")


def snapshot(path: Path):
    if not path.exists():
        return None
    if path.is_file():
        return path.read_bytes()
    return {p.name: p.read_bytes() if p.is_file() else "folder" for p in sorted(path.iterdir())}


def error_lines(stderr: str) -> list[str]:
    """stderr's lines, less the warnings other libraries print while loading (torchao's, with
    a torch it was not built for)."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith(
        ("W1", "  warnings.warn", "/")) and "Warning" not in line and "torchao" not in line]


def judge(argv: list[str], cwd, work: Path) -> tuple[str | None, object, str]:
    outs = [Path(argv[i + 1]) for i, a in enumerate(argv[:-1]) if a == "--out"]
    before = {o: snapshot(o) for o in outs}
    try:
        done = subprocess.run(argv, cwd=cwd or ROOT, env=ENV, capture_output=True, text=True,
                              errors="replace", timeout=300)
        code, err = done.returncode, done.stderr
    except subprocess.TimeoutExpired:
        return "over 300 s", "timeout", ""
    lines = error_lines(err)
    last = lines[-1][:150] if lines else ""
    if "Traceback" in err:
        return "traceback", code, last
    if (work / "hostile-pwned").exists() or (ROOT / "hostile-pwned").exists():
        return "a pickle ran code", code, last
    if code == 2:
        if sum(line.startswith("error:") for line in lines) != 1:
            return "not one error line", code, last
        changed = [str(o) for o, b in before.items() if snapshot(o) != b]
        return (f"{changed[0]} changed on refusal" if changed else None), code, last
    if code != 0:
        return f"exit {code}", code, last
    for out in outs:
        for path in ([out] if out.is_file() else out.glob("*.json") if out.is_dir() else []):
            if path.suffix == ".json" and ("NaN" in path.read_text()
                                           or "Infinity" in path.read_text()):
                return f"NaN in {path.name}", code, last
    return None, code, last


def run_cases(s: Sweep, only: str) -> int:
    for build in (main_cases, model_cases, calibrate_and_splits_cases):
        build(s)
    chosen = [c for c in s.cases if only in c[0]]
    failed, start = [], time.perf_counter()
    for name, argv, cwd in chosen:
        why, code, last = judge(argv, cwd, s.work)
        print(f"{'FAIL' if why else 'ok  '} {name:42s} exit {code}  {why or ''} | {last}",
              flush=True)
        failed += [name] if why else []
    print(f"{len(failed)} of {len(chosen)} cases failed ({time.perf_counter() - start:.0f} s)"
          + (f": {failed}" if failed else ""))
    return len(failed)


def file_state(folder: Path) -> dict:
    state = {}
    for entry in os.scandir(folder):
        try:
            state[entry.name] = entry.stat().st_mtime_ns
        except FileNotFoundError:  # a temporary gone between listing and stat
            state[entry.name] = None
    return state


def interrupt_at(argv: list[str], out: Path, event: int, signum) -> int:
    """Start the command, and send `signum` at the `event`-th change of --out's entries."""
    process = subprocess.Popen(argv, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    seen, last = 0, file_state(out)
    while process.poll() is None:
        now = file_state(out)
        if now != last:
            seen, last = seen + 1, now
            if seen > event:
                process.send_signal(signum)
                break
    err = process.communicate()[1]
    return process.returncode if "Traceback" not in err else -999


def run_interrupts(s: Sweep) -> int:
    commands = {
        "main": ([PY, ROOT / "main.py", "--quick", "--seeds", "1", "--no-sweep", "--train", s.t,
                  "--val", s.v], ("distil_rank_summary.json", "distil_rank_final_report.png")),
        "compress": ([PY, "-m", "distil_rank.compress", "--model", s.esm, "--fasta", s.fa,
                      "--budget", "0.5"], ("model.lowrank.safetensors", "report.json")),
        "embed --split": ([PY, "-m", "distil_rank.embed", "--model", s.esm, "--fasta", s.fa,
                           "--split", "0.8"], ("embeddings_train.pt", "embeddings_val.pt"))}
    failed = 0
    for name, (argv, pair) in commands.items():
        out = s.work / f"interrupted_{name.split()[0]}"
        argv = [str(a) for a in argv] + ["--out", str(out)]
        subprocess.run(argv, cwd=ROOT, env=ENV, capture_output=True, check=True)
        for event in range(6):
            for signum in (signal.SIGINT, signal.SIGTERM):
                old = {p: (out / p).read_bytes() for p in pair}
                code = interrupt_at(argv, out, event, signum)
                names = sorted(p.name for p in out.iterdir())
                kept = all((out / p).read_bytes() == old[p] for p in pair if (out / p).exists())
                whole = names == sorted(pair)  # the old pair or a new complete one, no other
                again = subprocess.run(argv, cwd=ROOT, env=ENV, capture_output=True).returncode
                ok = whole and code != -999 and again == 0
                failed += not ok
                print(f"{'ok  ' if ok else 'FAIL'} {name} {signum.name} at file event {event}: "
                      f"exit {code}, {'old' if kept else 'new'} pair, files {names}, next run "
                      f"exit {again}", flush=True)
    print(f"{failed} interrupt(s) failed")
    return failed


def api_cases(work: Path) -> dict:
    """The library's calls with wrong arguments: each must raise TypeError, ValueError or
    OSError naming what was wrong, or return what it documents."""
    from torch import nn

    from distil_rank import (
        LowRankLinear,
        compress_linear,
        compress_model,
        load_compressed,
        quantise_int8,
        save_compressed,
    )

    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 8))

    x, saved = torch.randn(200, 16), work / "ok.safetensors"
    compressed = model()
    compress_model(compressed, x, rank=4)
    save_compressed(compressed, saved)
    (work / "text.safetensors").write_text("hi")
    (work / "cut.safetensors").write_bytes(saved.read_bytes()[:300])

    def fit(**options):
        return lambda: compress_model(model(), x, **options)

    raw = saved.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header, body = json.loads(raw[8:8 + size]), raw[8 + size:]
    layers = json.loads(header["__metadata__"]["distil_rank.lowrank_layers"])

    def tampered(name, change):  # the file with its layer table changed
        table = json.loads(json.dumps(layers))
        change(table)
        edited = {**header, "__metadata__": {"distil_rank.lowrank_layers": json.dumps(table)}}
        text = json.dumps(edited).encode()
        (work / name).write_bytes(len(text).to_bytes(8, "little") + text + body)
        return lambda: load_compressed(model(), work / name)

    edits = {"rank 5": lambda t: t["0"].update(rank=5), "rank 0": lambda t: t["0"].update(rank=0),
             "rank 'x'": lambda t: t["0"].update(rank="x"),
             "in_features 15": lambda t: t["0"].update(in_features=15),
             "bias false": lambda t: t["0"].update(bias=False),
             "a GELU named": lambda t: t.update({"1": t["0"]}),
             "a layer dropped": lambda t: t.pop("2"), "no rank": lambda t: t["0"].pop("rank")}

    return {
        **{f"budget {b!r}": fit(budget=b) for b in (0.0, 2, "0.5", math.nan, True)},
        **{f"rank {r!r}": fit(rank=r) for r in (0, -1, 1.5, 1000)},
        "rank and budget": fit(rank=4, budget=0.5), "a target keyword": fit(target=0.5),
        "layers a string": fit(rank=4, layers="ab"), "layers missing": fit(rank=4, layers=["9"]),
        "layers not Linear": fit(rank=4, layers=["1"]), "seed -1": fit(rank=4, seed=-1),
        "seed 1.5": fit(rank=4, seed=1.5), "damping -1": fit(rank=4, damping=-1),
        "damping nan": fit(rank=4, damping=math.nan), "objective x": fit(budget=0.5,
                                                                         objective="x"),
        "unknown option": fit(rank=4, bogus=1), "config a dict": fit(config={"rank": 4}),
        "holdout of one row": fit(rank=4, holdout=x[:1]),
        "holdout of the wrong width": fit(rank=4, holdout=torch.randn(10, 3)),
        "calibration of the wrong width": lambda: compress_model(model(), torch.randn(9, 5),
                                                                 rank=4),
        "calibration nan": lambda: compress_model(model(), torch.full((9, 16), math.nan),
                                                  rank=4),
        "calibration empty": lambda: compress_model(model(), x[:0], rank=4),
        "calibration int": lambda: compress_model(model(), x.long(), rank=4),
        "model a string": lambda: compress_model("model", x, rank=4),
        "model without Linear": lambda: compress_model(nn.GELU(), x, rank=4),
        "linear rank 0": lambda: compress_linear(nn.Linear(16, 16), x, rank=0),
        "linear a Conv1d": lambda: compress_linear(nn.Conv1d(1, 1, 1), x, rank=2),
        "linear wrong width": lambda: compress_linear(nn.Linear(16, 16), x[:, :4], rank=2),
        "linear method x": lambda: compress_linear(nn.Linear(16, 16), x, rank=2, method="x"),
        "LowRankLinear rank 0": lambda: LowRankLinear(4, 4, 0),
        "LowRankLinear rank 9 of 4": lambda: LowRankLinear(4, 4, 9),
        "save a state_dict": lambda: save_compressed(model().state_dict(), work / "s.st"),
        "save to a folder": lambda: save_compressed(compressed, work),
        "save in a missing folder": lambda: save_compressed(compressed, work / "no" / "s.st"),
        "load into a state_dict": lambda: load_compressed(model().state_dict(), saved),
        "load a missing file": lambda: load_compressed(model(), work / "missing.st"),
        "load a text file": lambda: load_compressed(model(), work / "text.safetensors"),
        "load a cut file": lambda: load_compressed(model(), work / "cut.safetensors"),
        "load into another model": lambda: load_compressed(nn.Sequential(nn.Linear(4, 4)), saved),
        "quantise a string": lambda: quantise_int8("x"),
        **{f"load a file whose layer table has {name}": tampered(f"t{i}.st", edit)
           for i, (name, edit) in enumerate(edits.items())},
    }


def run_api(work: Path) -> int:
    import warnings

    failed = 0
    for name, call in api_cases(work).items():
        try:
            with warnings.catch_warnings(record=True) as said:
                warnings.simplefilter("always")
                result = f"returned {type(call()).__name__}"
            result += "".join(f"; warned: {w.message}" for w in said)[:160]
            bad = False
        except (TypeError, ValueError, OSError) as err:
            result, bad = f"{type(err).__name__}: {str(err).splitlines()[0][:140]}", False
        except Exception as err:  # anything else is a failure: the wrong kind of error
            result, bad = f"{type(err).__name__}: {str(err)[:140]}", True
        failed += bad
        print(f"{'FAIL' if bad else 'ok  '} {name:32s} {result}", flush=True)
    print(f"{failed} API case(s) failed")
    return failed


def main() -> int:
    p = OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="", help="run the cases whose name holds this text")
    p.add_argument("--interrupts", action="store_true",
                   help="signal the writing commands at each file event instead")
    p.add_argument("--api", action="store_true",
                   help="the library's calls with wrong arguments, in this process, instead")
    p.add_argument("--keep", action="store_true", help="keep the work folder (printed)")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="distil-rank-hostile-"))
    try:
        sweep = Sweep(work)
        failed = (run_api(work) if args.api else run_interrupts(sweep) if args.interrupts
                  else run_cases(sweep, args.only))
    finally:
        if args.keep:
            print(f"work folder: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
