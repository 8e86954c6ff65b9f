#!/usr/bin/env bash
# Runs on every worker of a TPU VM slice: bootstraps a virtualenv with the
# package and its TPU extra, then starts training with jax.distributed
# initialised (every worker runs the same command; JAX's multi-controller
# runtime finds its peers from the TPU metadata).
#
#   gcloud compute tpus tpu-vm ssh NAME --zone=Z --worker=all --command \
#     "cd adatape && bash launch/tpu_worker.sh \
#        --config=configs/parity/adatape.py --workdir=gs://BUCKET/run"
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${ADATAPE_VENV:-$HOME/.venvs/adatape}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -e '.[tpu]'
export ADATAPE_DISTRIBUTED="${ADATAPE_DISTRIBUTED:-1}"
exec "$venv/bin/python" -m adatape.main "$@"
