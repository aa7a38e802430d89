#!/usr/bin/env bash
# Run a command inside vlmeval-encred's environment, building it first if needed.
#
#   bash scripts/env.sh encred demo
#   bash scripts/env.sh python -m pytest -q tests
#
# The virtual environment is cached outside the checkout, keyed by the sha256 of
# requirements/env.txt, so a second run (or CI on the same machine) reuses it and
# a changed dependency list builds a fresh one.  The first build installs
# ms-vlmeval and with it the CUDA build of torch (~6.8 GB, ~5 min).  This project
# is then installed editable from *this* checkout (seconds).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${VLMEVAL_ENCRED_ENV_CACHE:-$HOME/.cache/vlmeval-encred}
REQ="$ROOT/requirements/env.txt"
KEY=$(sha256sum "$REQ" | cut -c1-12)
VENV="$CACHE/venv-$KEY"
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock-$KEY"
flock 9   # two runs at once wait for one build

if [ ! -f "$VENV/.complete" ]; then
  echo "[env.sh] building $VENV from $REQ (first time: ~5 min, ~7 GB)" >&2
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  "$VENV/bin/python" -m pip install -q -r "$REQ" >&2
  touch "$VENV/.complete"
fi

# (Re)install this checkout editable when the environment points elsewhere or setup.py changed.
STAMP="$VENV/.encred-source"
WANT="$ROOT $(sha256sum "$ROOT/setup.py" | cut -c1-12)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$ROOT" >&2
  printf '%s' "$WANT" > "$STAMP"
fi
flock -u 9

ln -sfn "$VENV" "$ROOT/.venv" 2>/dev/null || true
export PATH="$VENV/bin:$PATH"
export VIRTUAL_ENV="$VENV"
cd "$ROOT"
exec "$@"
