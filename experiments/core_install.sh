#!/usr/bin/env bash
# The core install for real: a fresh venv with `pip install -e .` (no
# extras) must have no TensorFlow and still train the tiny parity config,
# writing results, checkpoints and TensorBoard events. Prints the install
# time and size, then the same for the `images` extra on top.
#
#   bash experiments/core_install.sh [PYTHON] > experiments/results/install.txt
#
# PYTHON defaults to python3 (3.11-3.13). Needs the package index; takes
# minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${1:-python3}"
venv="$(mktemp -d)/venv"
run="$(mktemp -d)/run"

echo "# bash experiments/core_install.sh $python  ($(date -u +%F), $(uname -m))"
"$python" --version
start=$(date +%s)
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip 2>/dev/null
"$venv/bin/python" -m pip install -q -e . 2>/dev/null
echo "core install (pip install -e .): $(( $(date +%s) - start )) s," \
  "$(du -sm "$venv" | cut -f1) MB venv," \
  "$("$venv/bin/python" -m pip list 2>/dev/null | tail -n +3 | wc -l) packages"
if "$venv/bin/python" -c "import tensorflow" 2>/dev/null; then
  echo "FAIL: tensorflow is importable in the core install"
  exit 1
fi
echo "tensorflow: not installed"
"$venv/bin/python" -m adatape.main --config=configs/parity/adatape.py:tiny \
  --workdir="$run" | tail -n 4
ls "$run" | sed 's/^/  workdir: /'
start=$(date +%s)
"$venv/bin/python" -m pip install -q -e '.[images]' 2>/dev/null
echo "images extra on top (pip install -e '.[images]'): " \
  "$(( $(date +%s) - start )) s, $(du -sm "$venv" | cut -f1) MB venv"
rm -rf "$(dirname "$venv")" "$(dirname "$run")"
