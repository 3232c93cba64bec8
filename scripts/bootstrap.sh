#!/usr/bin/env bash
# Create/refresh the project's virtual environment (.venv) from the pinned requirements.
# Idempotent: re-installs only when requirements.txt or pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
stamp="$VENV/.facekd-installed"
# pip warns about every missing local index folder; keep its exit code (pipefail), drop the noise.
quiet() { grep -v "^WARNING: Location" || true; }
want=$(cat requirements.txt requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: installing pinned requirements (first time: a few minutes)"
  "$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | quiet
  "$VENV/bin/python" -m pip install -q -r requirements.txt -c requirements.lock 2>&1 | quiet
  "$VENV/bin/python" -m pip install -q --no-deps -e . 2>&1 | quiet
  "$VENV/bin/python" -m pip check
  echo "$want" > "$stamp"
fi
