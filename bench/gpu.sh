#!/usr/bin/env bash
# Everything that needs a GPU, in one command (bench/gpu.py says what it runs and checks).
# About 8 minutes on one H100 at 0db7230 (before the fused modes); the JSON it writes names
# the device. The fused kernel's figures alone: bash bench/gpu.sh --only latency split_k
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'error: no CUDA device')"
python bench/gpu.py --device cuda "$@"
