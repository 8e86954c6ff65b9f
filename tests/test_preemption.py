"""Preemption: SIGTERM saves and exits cleanly; a damaged checkpoint falls back."""

import os
import signal
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

from adatape import train
from configs.parity import adatape as adatape_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/parity/adatape.py"
OVERRIDES = {
    "mesh.data": 1,
    "total_steps": 40,
    "checkpoint_every_steps": 30,
    "log_every_steps": 2,
    "eval_every_steps": 40,
}


def _config():
  config = adatape_config.get_config("tiny")
  config.update_from_flattened_dict(OVERRIDES)
  return config


def _params(workdir, step):
  path = os.path.abspath(
      os.path.join(workdir, "checkpoints", str(step), "state")
  )
  return ocp.StandardCheckpointer().restore(path)["params"]


def _assert_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def _cli(workdir):
  return [
      sys.executable,
      "-m",
      "adatape.main",
      f"--workdir={workdir}",
      f"--config={CONFIG}:tiny",
  ] + [f"--config.{k}={v}" for k, v in OVERRIDES.items()]


def test_sigterm_saves_exits_cleanly_and_resumes_exactly(tmp_path):
  straight = str(tmp_path / "straight")
  train.train_and_evaluate(_config(), straight)

  workdir = tmp_path / "preempted"
  proc = subprocess.Popen(
      _cli(workdir),
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.DEVNULL,
      text=True,
  )
  for line in proc.stdout:
    if line.startswith("step 10/"):
      proc.send_signal(signal.SIGTERM)
      break
  out = proc.stdout.read()
  assert proc.wait(timeout=120) == 0
  assert "preempted at step" in out
  saved = sorted(
      int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit()
  )
  # Not the periodic step 30: a checkpoint written because of the signal.
  assert len(saved) == 1 and 10 <= saved[0] < 30, saved
  assert not (workdir / "results.json").exists()

  rerun = subprocess.run(
      _cli(workdir), cwd=REPO, capture_output=True, text=True, timeout=300
  )
  assert rerun.returncode == 0, rerun.stderr
  assert f"resumed from step {saved[0]}" in rerun.stdout
  _assert_equal(_params(straight, 40), _params(workdir, 40))


def test_truncated_latest_checkpoint_falls_back(tmp_path, capfd):
  config = adatape_config.get_config("tiny")
  config.mesh.data = 1
  workdir = tmp_path / "run"
  train.train_and_evaluate(config, str(workdir))
  expected = _params(workdir, 6)

  # Damage the latest checkpoint: truncate its largest file to half.
  files = [
      os.path.join(d, f)
      for d, _, fs in os.walk(workdir / "checkpoints" / "6" / "state")
      for f in fs
  ]
  largest = max(files, key=os.path.getsize)
  with open(largest, "r+b") as f:
    f.truncate(os.path.getsize(largest) // 2)
  os.remove(workdir / "results.json")

  capfd.readouterr()
  train.train_and_evaluate(config, str(workdir))
  captured = capfd.readouterr()
  assert "checkpoint 6" in captured.err and "falling back" in captured.err
  assert "resumed from step 4" in captured.out
  _assert_equal(expected, _params(workdir, 6))
