#!/usr/bin/env bash
# Create .venv and install dnfbot with the given extras (default: core only). Idempotent.
# Usage: bash scripts/setup_env.sh [EXTRAS]   e.g. bash scripts/setup_env.sh all,bench
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-}"
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
if [[ ",$EXTRAS," == *",all,"* || ",$EXTRAS," == *",train,"* || ",$EXTRAS," == *",dense,"* ]]; then
  # The CPU wheel first: a bare `torch` requirement would pull a multi-GB CUDA build.
  FIND=()
  [ -d /opt/wheels ] && FIND=(--find-links /opt/wheels)
  if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/python -m pip install -q "${FIND[@]}" "${TORCH_SPEC:-torch==2.13.0}"
  fi
fi
SPEC="."
[ -n "$EXTRAS" ] && SPEC=".[$EXTRAS]"
.venv/bin/python -m pip install -q -e "$SPEC"
