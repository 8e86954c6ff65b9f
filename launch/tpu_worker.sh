#!/usr/bin/env bash
# Runs on every worker of a TPU VM slice (started detached by
# `python -m launch.tpu`): bootstraps a virtualenv with the package and its
# TPU and image extras, then starts training with jax.distributed initialised (every
# worker runs the same command; JAX's multi-controller runtime finds its
# peers from the TPU metadata).
#
#   bash launch/tpu_worker.sh --config=configs/parity/adatape.py \
#       --workdir=gs://BUCKET/run [--config.KEY=VALUE ...]
#   bash launch/tpu_worker.sh --sweep --config=... --root=gs://BUCKET/sweep
#
# The interpreter: $ADATAPE_PYTHON if set, else the first of python3.13,
# python3.12, python3.11 and python3 that is 3.11-3.13. TPU VM images whose
# python3 is 3.10 (or older) get a Python 3.11 through uv, installed for
# this user (`pip install --user uv`; uv downloads a standalone CPython).
set -euo pipefail
cd "$(dirname "$0")/.."

supported() {
  "$1" -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))' \
    2>/dev/null
}

venv="${ADATAPE_VENV:-$HOME/.venvs/adatape}"
if [ ! -x "$venv/bin/python" ]; then
  python=""
  for candidate in "${ADATAPE_PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    if [ -n "$candidate" ] && command -v "$candidate" >/dev/null \
        && supported "$candidate"; then
      python="$candidate"
      break
    fi
  done
  if [ -n "$python" ]; then
    "$python" -m venv "$venv"
  else
    echo "no Python 3.11-3.13 on this worker; creating one with uv" >&2
    python3 -m pip install -q --user uv
    "$HOME/.local/bin/uv" venv --seed --python 3.11 "$venv"
  fi
fi
"$venv/bin/python" -m pip install -q --upgrade pip
# The TPU runtime and the image pipelines; ADATAPE_EXTRAS=tpu for a
# lighter install that trains parity and PVR only.
"$venv/bin/python" -m pip install -q -e ".[${ADATAPE_EXTRAS:-tpu,images}]"
export ADATAPE_DISTRIBUTED="${ADATAPE_DISTRIBUTED:-1}"
# This worker's index in the slice (0 writes a sweep's aggregate).
if [ -z "${ADATAPE_WORKER_ID:-}" ]; then
  ADATAPE_WORKER_ID="$(curl -s -H Metadata-Flavor:Google \
    http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number \
    2>/dev/null || echo 0)"
  export ADATAPE_WORKER_ID
fi
if [ "${1:-}" = "--sweep" ]; then
  shift
  exec "$venv/bin/python" -m launch.sweep --on-tpu "$@"
fi
exec "$venv/bin/python" -m adatape.main "$@"
