"""Everything that needs a GPU, in one run, with every result read back and checked.

    bash bench/gpu.sh                  # on a CUDA machine (this script with --device cuda)
    python bench/gpu.py --device cpu --quick --root /tmp/gpu_dry   # the same steps on a CPU

The steps, each in its own process (one failing does not hide the others), in this order, or
in the order --only gives:
  main        python main.py --device D --out results/D            (the default data)
  latency     python bench/latency.py --devices D                  (fp32 and bf16, eager,
              CUDA-graph replay and the fused kernel on CUDA, with the memory floor and the
              kernel's error; batch 1 to 65536; 1280 x 1280 at rank 64)
  split_k     python bench/latency.py --devices D --split-k --batches 1,32   (the same, with
              the kernel's opt-in split-K plans, where one row block leaves the chip idle)
  speed       python bench/speed.py --device D --skip-default-run  (the closed forms against
              distillation, timed on the device)
  published   python main.py --preset published --device D --out results/D/published
Then every JSON a step wrote is read back, and each must say it ran on the device asked for.
Writes bench/results/gpu_run_<device>.json: the steps, exit codes, seconds and files. With
--root, every output goes under that folder instead of the repository (for tests); with
--step-limit S, a step still running after S seconds is stopped (exit code null) and the next
one runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from distil_rank.errors import InputError, OneLineParser
from distil_rank.files import check_writable_folder, write_json

ROOT = Path(__file__).resolve().parents[1]

STEPS = ("main", "latency", "split_k", "speed", "published")


def steps(device: str, root: Path, quick: bool) -> dict[str, tuple[list[str], list[str]]]:
    """{step: (command, glob patterns of the JSON it writes, relative to root)}."""
    py = sys.executable
    quick_main = ["--quick", "--seeds", "1", "--no-sweep"] if quick else []
    quick_latency = ["--dim", "64", "--rank", "4", "--batches", "1,32", "--repeats", "5",
                     "--budget", "0.05"] if quick else []
    quick_speed = ["--repeats", "2", "--steps", "20", "--batched-steps", "5",
                   "--students", "6", "--rows", "256"] if quick else []
    bench = root / "bench" / "results"
    latency_files = f"bench/results/latency_*_d{64 if quick else 1280}_r*[0-9].json"
    return {
        "main": ([py, "main.py", "--device", device, "--out", str(root / "results" / device),
                  *quick_main], [f"results/{device}/distil_rank_summary.json"]),
        "latency": ([py, "bench/latency.py", "--devices", device, "--out-dir", str(bench),
                     *quick_latency], [latency_files]),
        "split_k": ([py, "bench/latency.py", "--devices", device, "--out-dir", str(bench),
                     "--split-k", *(quick_latency or ["--batches", "1,32"])],
                    [latency_files.replace("[0-9].json", "_splitk.json")]),
        "speed": ([py, "bench/speed.py", "--device", device, "--skip-default-run",
                   "--out-dir", str(bench), *quick_speed],
                  [f"bench/results/speed_{device}_*.json"]),
        "published": ([py, "main.py", "--preset", "published", "--device", device, "--out",
                       str(root / "results" / device / "published"), *quick_main],
                      [f"results/{device}/published/distil_rank_summary.json"]),
    }


def recorded_device(payload: dict) -> str:
    """The device type a result file says it ran on."""
    environment = payload["environment"]
    return "cpu" if environment["device_name"].startswith("CPU") else "cuda"


def check_outputs(root: Path, patterns: list[str], device: str, since: float) -> list[str]:
    """The files a step wrote (modified after `since`); each must name the device asked for."""
    found = []
    for pattern in patterns:
        files = [f for f in sorted(root.glob(pattern)) if f.stat().st_mtime >= since]
        if not files:
            raise RuntimeError(f"no {pattern} was written")
        for path in files:
            payload = json.loads(path.read_text())
            if recorded_device(payload) != device:
                raise RuntimeError(f"{path} says it ran on "
                                   f"{payload['environment']['device_name']}, not {device}")
            found.append(str(path.relative_to(root)))
    return found


def main() -> int:
    p = OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--root", default=str(ROOT), help="where results go (default: the repository)")
    p.add_argument("--quick", action="store_true", help="tiny settings: checks the plumbing only")
    p.add_argument("--only", nargs="+", choices=STEPS, default=None, metavar="STEP",
                   help=f"run only these steps, in the order given (of {', '.join(STEPS)}): "
                   "the one that matters most first, in case the machine's time runs out")
    p.add_argument("--step-limit", type=float, default=None, metavar="SECONDS",
                   help="stop a step that runs longer than this and go on to the next (a "
                   "lent GPU's time is short: one stuck step must not spend it all)")
    args = p.parse_args()
    try:  # now, not after the work
        check_writable_folder(args.root, "--root")
    except InputError as err:
        p.refuse(err)
    root = Path(args.root)
    record = {"device": args.device, "quick": args.quick, "steps": {}}
    failed = 0
    planned = steps(args.device, root, args.quick)
    for name in args.only or planned:
        command, patterns = planned[name]
        print(f"== {name}: {' '.join(command)}", flush=True)
        start = time.time()
        try:
            code = subprocess.run(command, cwd=ROOT, timeout=args.step_limit).returncode
        except subprocess.TimeoutExpired:  # the step's process is killed; its files not read
            code = None
        entry = {"command": command[1:], "exit_code": code,
                 "seconds": round(time.time() - start, 1)}
        if code is None:
            entry["error"] = f"stopped at the step limit of {args.step_limit:g} s"
        elif code == 0:
            try:
                entry["files"] = check_outputs(root, patterns, args.device, start)
            except RuntimeError as err:
                entry["error"] = str(err)
        failed += code != 0 or "error" in entry
        record["steps"][name] = entry
        print(f"== {name}: exit {code} in {entry['seconds']} s; "
              f"{entry.get('error') or ', '.join(entry.get('files', []))}", flush=True)
    out = root / "bench" / "results" / f"gpu_run_{args.device}.json"
    write_json(out, record)
    print(f"wrote {out}; {failed} step(s) failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
