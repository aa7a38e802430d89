#!/usr/bin/env bash
# Run a command inside vlmeval-encred's environment, building it first if needed.
#
#   bash scripts/env.sh encred demo
#   bash scripts/env.sh python -m pytest -q tests
#   bash scripts/env.sh --env eagle1 python -m pytest -q tests   # a family's environment
#
# (Environments select tests: a test module declares the environments it runs in, and the
# tests of other environments are deselected, so `--env eagle1 ... tests` runs Eagle-1's.)
#
# Base: a virtual environment cached outside the checkout, keyed by the sha256 of
# requirements/env.txt; the first build installs ms-vlmeval and with it the CUDA
# build of torch (~6.8 GB, ~5 min).
#
# Overlays (--env NAME or ENCRED_ENV=NAME): the pins a family's real upstream code
# needs (its recipe model_wrappers/NAME/recipe.txt, e.g. transformers 4.44 for EAGLE; or a
# recipe of no family, vlmeval_encred/recipes/NAME.txt) installed into a small venv of
# their own that sees the base's packages *behind* its own (a .pth file appends the
# base's site-packages).  Keyed by the sha256 of the base and overlay files (and the
# recipe's optional .post script, run with the overlay's python each time), so a second
# run reuses it in seconds and the 7 GB base is never copied or changed.
#
# This checkout: installed editable into a layer of its own, `.venvs/<env>` inside the
# checkout (a pip-less venv whose .pth adds the shared base or overlay behind it).  The
# shared environments never hold any checkout, so a second clone, a CI run or another
# branch cannot re-point this checkout's `encred` to its code.  `.venv` links to
# `.venvs/base`.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${VLMEVAL_ENCRED_ENV_CACHE:-$HOME/.cache/vlmeval-encred}
REQ="$ROOT/requirements/env.txt"
KEY=$(sha256sum "$REQ" | cut -c1-12)
VENV="$CACHE/venv-$KEY"
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
ENV_NAME=${ENCRED_ENV:-}
if [ "${1:-}" = "--env" ]; then ENV_NAME=$2; shift 2; fi

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
RUN="$VENV"

if [ -n "$ENV_NAME" ] && [ "$ENV_NAME" != base ]; then
  # A family's recipe (model_wrappers/NAME/recipe.txt) or one that belongs to no family
  # (vlmeval_encred/recipes/NAME.txt, with an optional NAME.post); .ci/run lists the same two places.
  if [ -f "$ROOT/model_wrappers/$ENV_NAME/recipe.txt" ]; then
    OREQ="$ROOT/model_wrappers/$ENV_NAME/recipe.txt"
  else
    OREQ="$ROOT/vlmeval_encred/recipes/$ENV_NAME.txt"
  fi
  OPOST="$ROOT/vlmeval_encred/recipes/$ENV_NAME.post"
  if [ ! -f "$OREQ" ]; then
    HAVE=$(cd "$ROOT" && { ls model_wrappers/*/recipe.txt | cut -d/ -f2; ls vlmeval_encred/recipes/*.txt | xargs -n1 basename | sed 's/\.txt$//'; } 2>/dev/null | sort | tr '\n' ' ')
    echo "[env.sh] unknown environment '$ENV_NAME': no model_wrappers/$ENV_NAME/recipe.txt nor $OREQ (have: base $HAVE)" >&2
    exit 2
  fi
  OKEY=$( (cat "$REQ" "$OREQ"; [ -f "$OPOST" ] && cat "$OPOST" || true) | sha256sum | cut -c1-12)
  OV="$CACHE/overlay-$ENV_NAME-$OKEY"
  if [ ! -f "$OV/.complete" ]; then
    echo "[env.sh] building overlay $OV from $OREQ on $VENV" >&2
    rm -rf "$OV"
    "$VENV/bin/python" -m venv --without-pip "$OV"
    BASE_SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    OV_SITE=$("$OV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    # zz_: .pth files run in name order, so the base comes after anything the overlay adds.
    echo "$BASE_SITE" > "$OV_SITE/zz_encred_base_env.pth"
    "$OV/bin/python" -m pip install -q -r "$OREQ" >&2
    touch "$OV/.complete"
  fi
  # The recipe's .post step runs each time (it is quick): it may point the overlay at a source the
  # user registered (encred sources), which can change between runs.
  if [ -f "$OPOST" ]; then ENCRED_ROOT="$ROOT" PYTHON="$OV/bin/python" bash "$OPOST" >&2; fi
  RUN="$OV"
fi

# Older versions of this script installed the calling checkout into the shared environment
# itself; such an install would shadow every other checkout's code, so it is removed once.
if [ -f "$RUN/.encred-source" ]; then
  "$RUN/bin/python" -m pip uninstall -q -y vlmeval-encred >&2 || true
  rm -f "$RUN/.encred-source"
fi

# This checkout's own layer on top of RUN (seconds to build; rebuilt when RUN or setup.py changes).
LAYER="$ROOT/.venvs/${ENV_NAME:-base}"
WANT="$RUN $(sha256sum "$ROOT/setup.py" | cut -c1-12)"
if [ "$(cat "$LAYER/.encred-layer" 2>/dev/null)" != "$WANT" ]; then
  rm -rf "$LAYER"
  mkdir -p "$ROOT/.venvs"
  "$RUN/bin/python" -m venv --without-pip "$LAYER"
  RUN_SITE=$("$RUN/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  LAYER_SITE=$("$LAYER/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  # 00_: processed first, so the shared packages (and the overlay's own .pth files) are there
  # before this checkout's start-up hook runs; addsitedir also processes RUN's .pth files.
  printf 'import site; site.addsitedir(%s)\n' "'$RUN_SITE'" > "$LAYER_SITE/00_encred_shared_env.pth"
  # Built by the base environment's python (its packages agree with each other; an overlay's older
  # pins can break a base package's setuptools plug-in, e.g. kernels' egg_info writer importing a
  # newer huggingface_hub), installed into the layer; the console script then runs the layer's python.
  PYTHONWARNINGS=ignore "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation --no-warn-script-location \
    --prefix "$LAYER" -e "$ROOT" >&2
  for script in "$LAYER"/bin/encred; do
    [ -f "$script" ] && sed -i "1s|^#!.*python.*$|#!$LAYER/bin/python|" "$script"
  done
  printf '%s' "$WANT" > "$LAYER/.encred-layer.tmp.$$" && mv -f "$LAYER/.encred-layer.tmp.$$" "$LAYER/.encred-layer"
fi
flock -u 9

if [ -z "$ENV_NAME" ] || [ "$ENV_NAME" = base ]; then ln -sfn ".venvs/base" "$ROOT/.venv" 2>/dev/null || true; fi
export PATH="$LAYER/bin:$PATH"
export VIRTUAL_ENV="$LAYER"
export ENCRED_ENV_NAME="${ENV_NAME:-base}"
cd "$ROOT"
exec "$@"
