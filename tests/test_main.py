"""The command line: bad input is one line and no files; SIGKILL resumes."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from adatape import profiling

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/parity/adatape.py"


def _main(*args, workdir):
  return subprocess.run(
      [sys.executable, "-m", "adatape.main", f"--workdir={workdir}", *args],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
  )


@pytest.mark.parametrize(
    "args, message",
    [
        ([f"--config={CONFIG}:tiny", "--config.no_such_key=1"], "no_such_key"),
        (
            [f"--config={CONFIG}:tiny", "--config.tape.num_tokens=abc"],
            "num_tokens",
        ),
        (
            [f"--config={CONFIG}:tiny", "--config.tape.epsilon=9.0"],
            "tape.epsilon=9.0 must be <= tape.num_tokens",
        ),
        (
            [f"--config={CONFIG}:tiny", "--config.tape.num_tokens=0"],
            "tape.num_tokens=0 must be >= 1",
        ),
        (
            [f"--config={CONFIG}:tiny", "--config.data.seq_len=-4"],
            "data.seq_len=-4 must be >= 1",
        ),
        ([f"--config={CONFIG}:seq_len=-4"], "data.seq_len=-4"),
        ([f"--config={CONFIG}:colour=red"], "'colour' is unknown"),
        (["--config=configs/parity/nope.py"], "nope.py"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, message):
  workdir = tmp_path / "run"
  result = _main(*args, workdir=workdir)
  assert result.returncode == 2, result.stderr
  lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1, result.stderr
  assert message in lines[0], lines[0]
  assert "Traceback" not in result.stderr
  assert not workdir.exists()


def test_bad_input_leaves_an_existing_run_untouched(tmp_path):
  workdir = tmp_path / "run"
  ok = _main(f"--config={CONFIG}:tiny", "--config.mesh.data=1", workdir=workdir)
  assert ok.returncode == 0, ok.stderr
  before = {p: os.path.getmtime(p) for p in workdir.rglob("*")}
  bad = _main(
      f"--config={CONFIG}:tiny",
      "--config.mesh.data=1",
      "--config.tape.epsilon=2.5",
      workdir=workdir,
  )
  assert bad.returncode == 2
  assert "different config" in bad.stderr
  assert {p: os.path.getmtime(p) for p in workdir.rglob("*")} == before


def _params(workdir, step):
  path = os.path.abspath(
      os.path.join(workdir, "checkpoints", str(step), "state")
  )
  return ocp.StandardCheckpointer().restore(path)["params"]


def test_sigkill_then_rerun_matches_uninterrupted_run(tmp_path):
  args = [
      f"--config={CONFIG}:tiny",
      "--config.mesh.data=1",
      "--config.total_steps=60",
      "--config.checkpoint_every_steps=5",
      "--config.log_every_steps=5",
      "--config.eval_every_steps=30",
  ]
  straight = tmp_path / "straight"
  assert _main(*args, workdir=straight).returncode == 0

  killed = tmp_path / "killed"
  proc = subprocess.Popen(
      [sys.executable, "-m", "adatape.main", f"--workdir={killed}", *args],
      cwd=REPO,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
  )
  ckpt_dir = killed / "checkpoints"
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    done = [
        d
        for d in (os.listdir(ckpt_dir) if ckpt_dir.exists() else [])
        if d.isdigit()
    ]
    if any(int(d) >= 10 for d in done):
      break
    time.sleep(0.05)
  assert proc.poll() is None, "the run finished before it could be killed"
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert not (killed / "results.json").exists()

  rerun = _main(*args, workdir=killed)
  assert rerun.returncode == 0, rerun.stderr
  assert "resumed from step" in rerun.stdout
  for a, b in zip(
      jax.tree.leaves(_params(straight, 60)),
      jax.tree.leaves(_params(killed, 60)),
  ):
    np.testing.assert_array_equal(a, b)


def test_profile_steps_and_the_compilation_cache(tmp_path):
  """A trace of the chosen steps lands in WORKDIR/profile (TensorBoard's
  profile tab reads the .xplane.pb), and --compilation_cache fills its
  folder, which a repeated run then reads."""
  workdir, cache = tmp_path / "run", tmp_path / "cache"
  proc = _main(
      f"--config={CONFIG}:tiny",
      "--config.mesh.data=1",
      "--config.profile_steps=(2, 4)",
      f"--compilation_cache={cache}",
      workdir=workdir,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "profile of steps 2..3" in proc.stdout
  traces = [
      name
      for _, _, names in os.walk(workdir / "profile")
      for name in names
      if name.endswith(".xplane.pb")
  ]
  assert traces
  # Its train steps, ranked by XLA op (experiments/profile_ops.py).
  ops = profiling.op_profile(str(workdir))
  assert (ops.module, ops.runs) == ("jit_train_step", 2)
  assert os.listdir(cache)
  bad = _main(
      f"--config={CONFIG}:tiny",
      "--config.profile_steps=(4, 9)",
      workdir=tmp_path / "bad",
  )
  assert bad.returncode == 2
  assert "profile_steps=(4, 9) must be (first, last)" in bad.stderr
