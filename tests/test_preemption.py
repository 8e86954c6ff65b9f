"""Preemption: SIGTERM saves and exits cleanly; a damaged checkpoint falls back."""

import asyncio
import gc
import logging
import os
import shutil
import signal
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from adatape import checkpointing
from adatape import train
from adatape.models import encoder
from configs.parity import adatape as adatape_config
from experiments import damaged_resume

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


def _tree_digest(directory):
  """{relative path: bytes} of every file under `directory`."""
  result = {}
  for folder, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(folder, name)
      with open(path, "rb") as f:
        result[os.path.relpath(path, directory)] = f.read()
  return result


def _tiny_config():
  config = adatape_config.get_config("tiny")
  config.mesh.data = 1
  return config


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """A tiny run with checkpoints at steps 2, 4 and 6, trained once."""
  workdir = tmp_path_factory.mktemp("finished") / "run"
  train.train_and_evaluate(_tiny_config(), str(workdir))
  return workdir


@pytest.fixture(name="tiny_run")
def fixture_tiny_run(finished_run, tmp_path):
  """A copy of `finished_run`, as if killed before writing its results."""
  workdir = tmp_path / "run"
  shutil.copytree(finished_run, workdir)
  os.remove(workdir / "results.json")
  return _tiny_config(), workdir


# A failed read's leftovers (every other read of the checkpoint waking
# Orbax's closed event loop) reach pytest as unraisable-exception warnings
# unless the Checkpointer drops them: they fail the test.
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_truncated_latest_checkpoint_is_moved_aside_not_deleted(
    tiny_run, capfd
):
  config, workdir = tiny_run
  expected = _params(workdir, 6)
  damaged_resume.truncate_arrays(workdir / "checkpoints" / "6" / "state")
  damaged = _tree_digest(workdir / "checkpoints" / "6")

  capfd.readouterr()
  train.train_and_evaluate(config, str(workdir))
  captured = capfd.readouterr()
  assert "checkpoint 6" in captured.err and "damaged" in captured.err
  assert "OUT_OF_RANGE" in captured.err, captured.err  # The cause, named,
  assert "for value of size" in captured.err  # down to its reason.
  assert "resumed from step 4" in captured.out
  _assert_equal(expected, _params(workdir, 6))
  # The damaged one is kept, byte for byte, under checkpoints/damaged/.
  assert _tree_digest(workdir / "checkpoints" / "damaged" / "6") == damaged


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_analysis_of_a_damaged_checkpoint_is_one_line_and_moves_nothing(
    tiny_run,
):
  _, workdir = tiny_run
  damaged_resume.truncate_arrays(workdir / "checkpoints" / "6" / "state")
  before = _tree_digest(workdir / "checkpoints")
  with pytest.raises(checkpointing.CheckpointError) as raised:
    checkpointing.restore_params(str(workdir))
  message = str(raised.value)
  assert "\n" not in message
  assert "checkpoint 6" in message and "is damaged" in message
  assert "OUT_OF_RANGE" in message and "for value of size" in message
  assert "tensorstore_spec" not in message
  assert message.endswith("other steps there: [2, 4]")
  assert _tree_digest(workdir / "checkpoints") == before
  step, params = checkpointing.restore_params(str(workdir), 4)
  assert step == 4
  _assert_equal(params, _params(workdir, 4))


def test_a_long_cause_keeps_what_was_read_and_why_without_the_spec(
    tiny_run, monkeypatch
):
  _, workdir = tiny_run
  spec = '{"driver":"zarr","kvstore":{"path":"gs://b/r/checkpoints/6/"}}'
  reason = "Requested byte range [0, 23575) is not valid for value of size 9"
  middle = "".join(f": Error reading part {i}" for i in range(40))
  error = ValueError(
      f'OUT_OF_RANGE: Error opening "zarr" driver{middle}: {reason}'
      f" [tensorstore_spec='{spec}']\nsecond line"
  )

  def fails(*args, **kwargs):
    del args, kwargs
    try:
      raise error
    except ValueError as e:
      raise RuntimeError("restore failed") from e

  monkeypatch.setattr(ocp.CheckpointManager, "restore", fails)
  with pytest.raises(checkpointing.CheckpointError) as raised:
    checkpointing.restore_params(str(workdir))
  message = str(raised.value)
  cause = message[message.index("(") + 1 : message.rindex(")")]
  assert cause.startswith('ValueError: OUT_OF_RANGE: Error opening "zarr"')
  assert cause.endswith(reason)
  # The middle of the nesting is what goes: the cause is one line, much
  # shorter than the message it came from.
  assert " ... " in cause and ": Error reading part 20:" not in cause
  assert len(cause) < len(str(error).splitlines()[0]) / 2
  assert "tensorstore_spec" not in cause and "second line" not in cause


def test_unparsable_metadata_is_damage(tiny_run, capfd):
  config, workdir = tiny_run
  with open(workdir / "checkpoints" / "6" / "state" / "_METADATA", "w") as f:
    f.write("{not json")
  capfd.readouterr()
  train.train_and_evaluate(config, str(workdir))
  assert "resumed from step 4" in capfd.readouterr().out
  assert (workdir / "checkpoints" / "damaged" / "6" / "state").is_dir()


class _RenamedHead(nn.Module):
  """The classifier head of a later code version: its Dense renamed."""

  num_classes: int
  bias_init: float = 0.0

  @nn.compact
  def __call__(self, x_BxD):
    return nn.Dense(self.num_classes, name="classifier")(x_BxD)


def test_resume_after_a_parameter_rename_keeps_every_checkpoint(
    tiny_run, monkeypatch
):
  config, workdir = tiny_run
  before = _tree_digest(workdir / "checkpoints")
  monkeypatch.setattr(encoder, "Head", _RenamedHead)
  with pytest.raises(checkpointing.CheckpointError) as raised:
    train.train_and_evaluate(config, str(workdir))
  message = str(raised.value)
  assert "\n" not in message
  assert "checkpoint 6" in message and "does not fit this model" in message
  assert "head/classifier" in message and "no checkpoint was changed" in message
  assert _tree_digest(workdir / "checkpoints") == before


def test_a_transient_restore_error_stops_with_every_checkpoint_intact(
    tiny_run, monkeypatch
):
  config, workdir = tiny_run
  before = _tree_digest(workdir / "checkpoints")

  def unavailable(self, step, abstract_state):
    raise RuntimeError("UNAVAILABLE: connection reset by peer")

  monkeypatch.setattr(checkpointing.Checkpointer, "restore", unavailable)
  with pytest.raises(checkpointing.CheckpointError, match="UNAVAILABLE"):
    train.train_and_evaluate(config, str(workdir))
  assert _tree_digest(workdir / "checkpoints") == before


def test_a_rename_on_the_command_line_is_one_line_and_exit_1(tiny_run):
  _, workdir = tiny_run
  # The same run, resumed by a model whose parameter tree differs: the
  # checkpoint's state gains a leaf this model does not have.
  path = workdir / "checkpoints" / "6" / "state"
  before = _tree_digest(workdir / "checkpoints")
  proc = subprocess.run(
      [
          sys.executable,
          "-c",
          "import sys; from adatape.models import encoder, outputs;"
          "import flax.linen as nn\n"
          "class H(nn.Module):\n"
          "  num_classes: int\n"
          "  bias_init: float = 0.0\n"
          "  @nn.compact\n"
          "  def __call__(self, x):\n"
          "    return nn.Dense(self.num_classes, name='renamed')(x)\n"
          "encoder.Head = H\n"
          "from adatape import main; from absl import app;"
          "sys.argv = sys.argv[:1] + sys.argv[1:];"
          "app.run(main.main, flags_parser=main._parse_flags)",
          f"--workdir={workdir}",
          "--config=configs/parity/adatape.py:tiny",
          "--config.mesh.data=1",
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == 1, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert lines[-1].startswith("error: checkpoint 6"), lines[-3:]
  assert "Traceback" not in proc.stderr
  assert path.is_dir() and _tree_digest(workdir / "checkpoints") == before


def _replicated_state():
  """A train-state-like tree, replicated over the 8 test devices."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  state = {
      "params": {"kernel": np.arange(64, dtype=np.float32).reshape(16, 4)},
      "step": np.int32(3),
      "rng": np.asarray(jax.random.key_data(jax.random.key(5))),
  }
  return jax.device_put(state, replicated)


def test_one_process_writes_replicated_arrays_whole_and_reads_old_ones(
    tmp_path,
):
  state = _replicated_state()
  assert len(state["params"]["kernel"].sharding.device_set) == 8
  ours = checkpointing.Checkpointer(
      str(tmp_path / "ours"), every_steps=1, max_to_keep=2
  )
  assert ours.save(1, state, {"position": 1})
  ours.close()
  # Orbax's default splits the kernel into 8 slices of (2, 4), one per
  # replica; one process writes it from one device, whole.
  metadata = ocp.StandardCheckpointHandler().metadata(
      tmp_path / "ours" / "1" / "state"
  )
  kernel = getattr(metadata, "tree", metadata)["params"]["kernel"]
  assert kernel.storage.write_shape == (16, 4)
  # A checkpoint written with Orbax's default (before this handler) is
  # restored exactly, into the requested shardings.
  old = ocp.CheckpointManager(str(tmp_path / "old"))
  old.save(
      1,
      args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          meta=ocp.args.JsonSave({"position": 1}),
      ),
  )
  old.close()
  metadata = ocp.StandardCheckpointHandler().metadata(
      tmp_path / "old" / "1" / "state"
  )
  kernel = getattr(metadata, "tree", metadata)["params"]["kernel"]
  assert kernel.storage.write_shape == (2, 4)
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      state,
  )
  for name in ("old", "ours"):
    reader = checkpointing.Checkpointer(
        str(tmp_path / name), every_steps=1, max_to_keep=2
    )
    step, restored, meta = reader.restore_latest(abstract)
    reader.close()
    assert step == 1 and meta == {"position": 1}
    _assert_equal(restored, state)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
      assert got.sharding == want.sharding and got.dtype == want.dtype


class _WakesClosedLoop:
  """Wakes a closed event loop when collected, as a TensorStore read that
  finishes after Orbax closed its loop does."""

  def __init__(self, loop):
    self.loop = loop

  def __del__(self):
    self.loop.call_soon_threadsafe(lambda: None)


class _RaisesWhenCollected:

  def __init__(self, error):
    self.error = error

  def __del__(self):
    raise self.error


def test_only_a_failed_reads_leftovers_are_dropped():
  seen = []
  loop = asyncio.new_event_loop()
  loop.close()
  before = sys.unraisablehook
  sys.unraisablehook = lambda u: seen.append(str(u.exc_value))
  stray_reads = checkpointing.StrayReads()
  try:
    stray_reads.install()
    _WakesClosedLoop(loop)
    # The same message from elsewhere, and other errors, are passed on.
    _RaisesWhenCollected(RuntimeError("Event loop is closed"))
    _RaisesWhenCollected(ValueError("a real problem"))
    gc.collect()
    assert seen == ["Event loop is closed", "a real problem"]
    stray_reads.remove()
    assert sys.unraisablehook is not stray_reads
    _WakesClosedLoop(loop)
    gc.collect()
    assert seen[2:] == ["Event loop is closed"]
  finally:
    sys.unraisablehook = before


def test_only_unretrieved_data_errors_are_dropped_from_asyncio_logs(
    caplog, monkeypatch
):
  asyncio_log = logging.getLogger("asyncio")
  # Without the filter a failed read in an earlier test left installed.
  monkeypatch.setattr(asyncio_log, "filters", [])
  stray_reads = checkpointing.StrayReads()

  def task_failed(message):
    try:
      raise ValueError(message)
    except ValueError:
      asyncio_log.exception("Task exception was never retrieved\nfuture: x")

  stray_reads.install()
  try:
    task_failed("OUT_OF_RANGE: Error reading byte range")
    task_failed("UNAVAILABLE: connection reset by peer")
    asyncio_log.error("Unclosed client session")
  finally:
    stray_reads.remove()
  task_failed("DATA_LOSS: after remove")
  kept = [str(r.exc_info[1]) if r.exc_info else r.msg for r in caplog.records]
  assert kept == [
      "UNAVAILABLE: connection reset by peer",
      "Unclosed client session",
      "DATA_LOSS: after remove",
  ]
