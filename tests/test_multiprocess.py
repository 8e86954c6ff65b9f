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
import pytest

from adatape import checkpointing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 60
ARGS = [
    "--config=configs/parity/adatape.py:tiny",
    "--config.mesh.data=-1",
    f"--config.total_steps={STEPS}",
    "--config.log_every_steps=5",
    f"--config.eval_every_steps={STEPS}",
    "--config.checkpoint_every_steps=50",
]


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(devices, **extra):
  env = dict(os.environ)
  env["XLA_FLAGS"] += f" --xla_force_host_platform_device_count={devices}"
  env.update(extra)
  return env


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l)["train/loss"] for l in f if "train/loss" in l]


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


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
  """A run of two processes (one device each) through jax.distributed."""
  workdir = str(tmp_path_factory.mktemp("two") / "run")
  procs = _launch_pair(workdir, ARGS, _free_port())
  outputs = [p.communicate(timeout=300) for p in procs]
  for proc, (_, err) in zip(procs, outputs):
    assert proc.returncode == 0, err[-3000:]
  return workdir, outputs


def test_two_processes_match_one_process_with_two_devices(
    tmp_path, two_processes
):
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
  two, outputs = two_processes
  # Only process 0 reports.
  assert "final eval accuracy" in outputs[0][0]
  assert "final eval accuracy" not in outputs[1][0]
  with open(os.path.join(two, "results.json")) as f:
    results = json.load(f)
  assert results["num_devices"] == 2 and results["eval/examples"] == 40

  np.testing.assert_allclose(_losses(one), _losses(two), rtol=1e-5)
  state_one = _state_at(one, STEPS)
  state_two = _state_at(two, STEPS)
  for a, b in zip(
      jax.tree.leaves(state_one["params"]), jax.tree.leaves(state_two["params"])
  ):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_sigterm_to_two_processes_saves_at_one_step_and_resumes_exactly(
    tmp_path, two_processes
):
  workdir = tmp_path / "preempted"
  procs = _launch_pair(str(workdir), ARGS, _free_port())
  for line in procs[0].stdout:
    if line.startswith("step 10/"):
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
  assert len(saved) == 1 and 10 <= saved[0] < 50, saved
  assert not (workdir / "results.json").exists()

  procs = _launch_pair(str(workdir), ARGS, _free_port())
  outputs = [p.communicate(timeout=300) for p in procs]
  for proc, (_, err) in zip(procs, outputs):
    assert proc.returncode == 0, err[-3000:]
  assert f"resumed from step {saved[0]}" in outputs[0][0]
  straight = _state_at(two_processes[0], STEPS)
  resumed = _state_at(str(workdir), STEPS)
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)


def _state_at(workdir, step):
  """The whole saved state (parameters, optimizer state, RNG) on one
  device."""
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  return ocp.StandardCheckpointer().restore(
      os.path.join(directory, str(step), "state"),
      checkpointing.on_one_device(directory, step),
  )


# Each process's elastic predictor runs its own inputs on its own devices.
_ELASTIC_CHILD = """
import sys
import jax
jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
import numpy as np
import test_elastic
from adatape import elastic
model = test_elastic._model()
x = np.asarray(jax.nn.one_hot(
    np.random.default_rng(int(sys.argv[2])).integers(0, 3, (12, 32)), 3))
params = jax.device_get(jax.jit(lambda x: model.init(
    jax.random.key(0), x, train=False))(jax.device_put(
        x[:1], jax.local_devices()[0]))["params"])
out = elastic.Predictor(model, params, chunk=4)(x)
padded = model.apply({"params": params}, x, train=False)
print(jax.device_count(), jax.local_device_count(),
      float(np.abs(out.logits - np.asarray(padded.logits)).max()))
"""


def test_elastic_inference_in_each_of_two_processes():
  port = _free_port()
  procs = [
      subprocess.Popen(
          [sys.executable, "-c", _ELASTIC_CHILD, f"localhost:{port}", str(i)],
          cwd=os.path.join(REPO, "tests"),
          stdout=subprocess.PIPE,
          stderr=subprocess.PIPE,
          text=True,
          env=_env(2, PYTHONPATH=REPO),
      )
      for i in range(2)
  ]
  for proc in procs:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    devices, local, error = out.split()
    # Four devices in the job, two of them this process's; its logits are
    # the padded run's.
    assert (devices, local) == ("4", "2")
    assert float(error) < 1e-5
