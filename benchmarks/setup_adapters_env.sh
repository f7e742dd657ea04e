#!/usr/bin/env bash
# Create .venv-adapters: AdapterHub `adapters` in its own environment, because it pins transformers~=4.57
# while adaptune runs on transformers 5. Used by benchmarks/train_speed.py (benchmarks/adapters_worker.py).
#
#   bash benchmarks/setup_adapters_env.sh            # creates .venv-adapters in the repository root
#   ADAPTERS_VENV=/some/where bash benchmarks/setup_adapters_env.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ADAPTERS_VENV:-$ROOT/.venv-adapters}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"

"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --upgrade --quiet pip
# torch first, pinned to the CPU build: installing `adapters` alone would pull torch with its CUDA wheels.
# A CPU wheel on disk (TORCH_WHEEL_DIR, default /opt/wheels) is used when present, else PyTorch's CPU index.
WHEEL="$(ls "${TORCH_WHEEL_DIR:-/opt/wheels}"/torch-"${TORCH_VERSION}"+cpu-*.whl 2>/dev/null | head -n 1 || true)"
if [ -n "$WHEEL" ]; then
    "$VENV/bin/python" -m pip install --quiet "$WHEEL"
else
    "$VENV/bin/python" -m pip install --quiet "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu \
        --extra-index-url https://pypi.org/simple
fi
# `adapters` brings the transformers 4.57.x it pins; safetensors and numpy come with it.
"$VENV/bin/python" -m pip install --quiet adapters
"$VENV/bin/python" - <<'PY'
import adapters, torch, transformers
print(f"adapters {adapters.__version__}, transformers {transformers.__version__}, torch {torch.__version__}")
assert "+cpu" in torch.__version__ or not torch.cuda.is_available(), "expected a CPU build of torch"
PY
