"""Two processes through jax.distributed equal one process with two devices."""

import json
import os
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

from adatape import checkpointing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = [
    "--config=configs/parity/adatape.py:tiny",
    "--config.mesh.data=-1",
    "--config.total_steps=8",
    "--config.log_every_steps=2",
]


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(devices, **extra):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env.update(extra)
  return env


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l)["train/loss"] for l in f if "train/loss" in l]


def _state(workdir, like=None):
  """The step-8 state; `like` gives the tree to restore onto device 0."""
  path = os.path.abspath(os.path.join(workdir, "checkpoints", "8", "state"))
  target = None
  if like is not None:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), like
    )
  return ocp.StandardCheckpointer().restore(path, target)


def test_two_processes_match_one_process_with_two_devices(tmp_path):
  one = str(tmp_path / "one")
  single = subprocess.run(
      [sys.executable, "-m", "adatape.main", f"--workdir={one}", *ARGS],
      cwd=REPO,
      env=_env(2),
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert single.returncode == 0, single.stderr[-2000:]

  two = str(tmp_path / "two")
  port = _free_port()
  procs = [
      subprocess.Popen(
          [sys.executable, "-m", "adatape.main", f"--workdir={two}", *ARGS],
          cwd=REPO,
          stdout=subprocess.PIPE,
          stderr=subprocess.PIPE,
          text=True,
          env=_env(
              1,
              ADATAPE_DISTRIBUTED="1",
              ADATAPE_COORDINATOR=f"localhost:{port}",
              ADATAPE_NUM_PROCESSES="2",
              ADATAPE_PROCESS_ID=str(i),
          ),
      )
      for i in range(2)
  ]
  outputs = [p.communicate(timeout=300) for p in procs]
  for proc, (_, err) in zip(procs, outputs):
    assert proc.returncode == 0, err[-3000:]
  # Only process 0 reports.
  assert "final eval accuracy" in outputs[0][0]
  assert "final eval accuracy" not in outputs[1][0]
  with open(os.path.join(two, "results.json")) as f:
    results = json.load(f)
  assert results["num_devices"] == 2 and results["eval/examples"] == 40

  np.testing.assert_allclose(_losses(one), _losses(two), rtol=1e-5)
  state_one = _state(one)
  state_two = _state(two, like=state_one)
  for a, b in zip(
      jax.tree.leaves(state_one["params"]), jax.tree.leaves(state_two["params"])
  ):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def _launch_pair(workdir, args, port):
  return [
      subprocess.Popen(
          [sys.executable, "-m", "adatape.main", f"--workdir={workdir}", *args],
          cwd=REPO,
          stdout=subprocess.PIPE,
          stderr=subprocess.PIPE,
          text=True,
          env=_env(
              1,
              ADATAPE_DISTRIBUTED="1",
              ADATAPE_COORDINATOR=f"localhost:{port}",
              ADATAPE_NUM_PROCESSES="2",
              ADATAPE_PROCESS_ID=str(i),
          ),
      )
      for i in range(2)
  ]


def test_sigterm_to_two_processes_saves_at_one_step_and_resumes_exactly(
    tmp_path,
):
  args = [
      "--config=configs/parity/adatape.py:tiny",
      "--config.mesh.data=-1",
      "--config.total_steps=150",
      "--config.log_every_steps=1",
      "--config.eval_every_steps=150",
      "--config.checkpoint_every_steps=100",
  ]
  straight = str(tmp_path / "straight")
  procs = _launch_pair(straight, args, _free_port())
  for proc in procs:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]

  workdir = tmp_path / "preempted"
  procs = _launch_pair(str(workdir), args, _free_port())
  for line in procs[0].stdout:
    if line.startswith("step 20/"):
      for proc in procs:
        proc.send_signal(signal.SIGTERM)
      break
  outputs = [p.communicate(timeout=120) for p in procs]
  for proc, (_, err) in zip(procs, outputs):
    assert proc.returncode == 0, err[-3000:]
  assert "preempted at step" in outputs[0][0], outputs[0][0][-2000:]
  saved = sorted(
      int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit()
  )
  # One checkpoint, written because of the signal, by both processes at
  # the same step (Orbax writes a step only when every process saved it).
  assert len(saved) == 1 and 20 <= saved[0] < 100, saved
  assert not (workdir / "results.json").exists()

  procs = _launch_pair(str(workdir), args, _free_port())
  outputs = [p.communicate(timeout=300) for p in procs]
  for proc, (_, err) in zip(procs, outputs):
    assert proc.returncode == 0, err[-3000:]
  assert f"resumed from step {saved[0]}" in outputs[0][0]
  state_a = _state_at(straight, 150)
  state_b = _state_at(str(workdir), 150)
  for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
    np.testing.assert_array_equal(a, b)


def _state_at(workdir, step):
  """The whole saved state (parameters, optimizer state, RNG) on one
  device."""
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  return ocp.StandardCheckpointer().restore(
      os.path.join(directory, str(step), "state"),
      checkpointing.on_one_device(directory, step),
  )
