"""The trainer: learning, files, exact resume, device-count invariance, guards."""

import functools
import glob
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from adatape import analysis
from adatape import assemble
from adatape import losses
from adatape import optim
from adatape import run_config
from adatape import train
from adatape.data import parity
from configs.parity import adatape as adatape_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny(**overrides):
  config = adatape_config.get_config("tiny")
  config.mesh.data = 1
  config.update_from_flattened_dict(overrides)
  return config


def _final_params(workdir, step):
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  return ocp.StandardCheckpointer().restore(os.path.abspath(path))["params"]


def _assert_trees_equal(a, b, rtol=0.0):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    if rtol:
      np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-6)
    else:
      np.testing.assert_array_equal(x, y)


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]


def test_train_step_learns_a_fixed_batch():
  config = _tiny(**{"optim.learning_rate": 3e-3})
  run = assemble.prepare(config)
  tx = optim.create(run.optim, 100)
  state = train.init_state(
      jax.random.key(0),
      model=run.model,
      tx=tx,
      input_shape=run.source.input_shape,
  )
  step = jax.jit(
      functools.partial(
          train.train_step,
          model=run.model,
          tx=tx,
          lr_fn=optim.schedule(run.optim, 100),
          loss=config.loss,
      )
  )
  batch = run.source.train_batch(0, 16)
  losses = []
  for _ in range(40):
    state, metrics = step(state, batch)
    losses.append(float(metrics["train/loss"]))
  assert losses[-1] < 0.7 * losses[0], losses
  assert int(state.step) == 40


def test_run_writes_every_file(tmp_path):
  workdir = str(tmp_path / "run")
  results = train.train_and_evaluate(_tiny(), workdir)
  for name in ("config.json", "metrics.jsonl", "results.json"):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == [
      "2",
      "4",
      "6",
  ]
  for key in (
      "eval/accuracy",
      "eval/tape_length",
      "steps",
      "wall_time_s",
      "steps_per_sec",
      "num_params",
  ):
    assert key in results, key
  assert results["eval/examples"] == 40  # Every eval example, once.
  assert 1 <= results["eval/tape_length"] <= 4
  assert [s for s, _ in _losses(workdir)] == [2, 4, 6]
  # Running the finished command again reports and trains nothing.
  mtime = os.path.getmtime(os.path.join(workdir, "metrics.jsonl"))
  again = train.train_and_evaluate(_tiny(), workdir)
  assert again == json.loads(json.dumps(results))
  assert os.path.getmtime(os.path.join(workdir, "metrics.jsonl")) == mtime


def test_stopped_after_last_checkpoint_still_writes_results(tmp_path):
  workdir = str(tmp_path / "run")
  first = train.train_and_evaluate(_tiny(), workdir)
  os.remove(os.path.join(workdir, "results.json"))
  again = train.train_and_evaluate(_tiny(), workdir)
  assert again["eval/accuracy"] == first["eval/accuracy"]
  assert os.path.exists(os.path.join(workdir, "results.json"))


class _Interrupt(Exception):
  pass


def test_resume_after_interruption_is_exact(tmp_path, monkeypatch):
  # In bfloat16 with a bfloat16 first moment (the float32 path resumes
  # exactly in test_main's SIGKILL test): parameters and checkpoints stay
  # float32 and the resumed run is bit-identical.
  mixed = {"model.dtype": "bfloat16", "optim.mu_dtype": "bfloat16"}
  straight = str(tmp_path / "straight")
  train.train_and_evaluate(_tiny(**mixed), straight)
  for leaf in jax.tree.leaves(_final_params(straight, 6)):
    assert leaf.dtype == np.float32

  resumed = str(tmp_path / "resumed")
  original = parity.Source.train_batch

  def fail_at_step_5(self, step, local_batch):
    if step == 5:
      raise _Interrupt()
    return original(self, step, local_batch)

  monkeypatch.setattr(parity.Source, "train_batch", fail_at_step_5)
  with pytest.raises(_Interrupt):
    train.train_and_evaluate(_tiny(**mixed), resumed)
  assert sorted(os.listdir(os.path.join(resumed, "checkpoints"))) == ["2", "4"]
  monkeypatch.setattr(parity.Source, "train_batch", original)
  train.train_and_evaluate(_tiny(**mixed), resumed)

  _assert_trees_equal(_final_params(straight, 6), _final_params(resumed, 6))
  assert _losses(straight) == _losses(resumed)


def test_four_devices_match_one_device(tmp_path):
  assert jax.device_count() >= 4
  one, four = str(tmp_path / "one"), str(tmp_path / "four")
  train.train_and_evaluate(_tiny(**{"mesh.data": 1}), one)
  results = train.train_and_evaluate(_tiny(**{"mesh.data": 4}), four)
  assert results["num_devices"] == 4
  steps_one, loss_one = zip(*_losses(one))
  steps_four, loss_four = zip(*_losses(four))
  assert steps_one == steps_four
  np.testing.assert_allclose(loss_one, loss_four, rtol=1e-5)
  _assert_trees_equal(_final_params(one, 6), _final_params(four, 6), rtol=1e-4)


def test_non_finite_loss_stops_with_last_checkpoint_intact(
    tmp_path, monkeypatch
):
  original = parity.Source.train_batch

  def poison_from_step_3(self, step, local_batch):
    batch = original(self, step, local_batch)
    if step >= 3:
      batch["inputs"] = batch["inputs"] * np.nan
    return batch

  monkeypatch.setattr(parity.Source, "train_batch", poison_from_step_3)
  workdir = str(tmp_path / "nan")
  with pytest.raises(train.NonFiniteError, match="step 4.*step 2"):
    train.train_and_evaluate(_tiny(), workdir)
  assert os.listdir(os.path.join(workdir, "checkpoints")) == ["2"]
  for leaf in jax.tree.leaves(_final_params(workdir, 2)):
    assert np.all(np.isfinite(leaf))
  assert not os.path.exists(os.path.join(workdir, "results.json"))


def test_workdir_of_another_config_is_refused(tmp_path):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(_tiny(), workdir)
  with pytest.raises(run_config.ConfigError, match="tape.num_tokens"):
    train.train_and_evaluate(_tiny(**{"tape.num_tokens": 2}), workdir)


def _config_modules():
  """Configs of the synthetic families; image families need a prepared
  dataset and are built in their own tests (test_images.py)."""
  for path in sorted(glob.glob(os.path.join(REPO, "configs", "*", "*.py"))):
    if os.path.basename(os.path.dirname(path)) in ("digits", "imagenet", "jft"):
      continue
    module = run_config.config_module(path, "config")
    if hasattr(module, "get_config"):
      yield os.path.relpath(path, REPO), module


def test_every_config_and_sweep_point_builds():
  seen = 0
  for path, module in _config_modules():
    for arg in (None, "tiny"):
      assemble.prepare(module.get_config(arg))
    for length in (16, 64):
      assemble.prepare(module.get_config(f"seq_len={length}"))
    if path.endswith("acm.py"):
      for stage in ("distill", "gates", "finetune"):
        config = module.get_config(f"stage={stage},init=/some/run")
        assemble.prepare(config)
        assert config.init_from == "/some/run"
        assert (config.optim.trainable == "") == (stage == "finetune")
      with pytest.raises(run_config.ConfigError, match="stage"):
        module.get_config("stage=teacher")
    points = []
    if hasattr(module, "sweep"):
      module.sweep(lambda points=points, **kw: points.append(kw))
      assert points, path
    for point in points:
      config = module.get_config()
      config.update_from_flattened_dict(point)
      assemble.prepare(config)
    seen += 1
  assert seen == 16


def test_reporter_writes_to_a_url_filesystem():
  # fsspec's in-memory filesystem stands in for gs://.
  from adatape import reporting  # pylint: disable=g-import-not-at-top
  from adatape import storage  # pylint: disable=g-import-not-at-top

  workdir = "memory://adatape_test_run"
  reporter = reporting.Reporter(
      workdir, total_steps=4, start_step=0, is_main=True
  )
  reporter.write(2, {"train/loss": 1.5})
  reporter.write(4, {"train/loss": 1.0})
  reporter.close()
  reporting.atomic_write_json(workdir + "/results.json", {"steps": 4})
  assert reporting.read_json(workdir + "/results.json") == {"steps": 4}
  # A resumed segment from step 2 drops the rows logged after it.
  reporting.Reporter(workdir, total_steps=4, start_step=2, is_main=True).close()
  rows = storage.read_text(workdir + "/metrics.jsonl").splitlines()
  assert [json.loads(r)["step"] for r in rows] == [2]
  # On an object store each flush is a new event file; TensorBoard reads
  # them all.
  events = [n for n in storage.listdir(workdir) if n.startswith("events.")]
  assert len(events) == 1


def test_losses_take_class_indices_multi_hot_and_soft_targets():
  logits = jax.random.normal(jax.random.key(0), (5, 4))
  labels = np.array([0, 3, 1, 2, 2])
  onehot = jax.nn.one_hot(labels, 4)
  for loss in losses.LOSSES:
    np.testing.assert_allclose(
        losses.task_loss(logits, onehot, loss),
        losses.task_loss(logits, labels, loss),
        rtol=1e-6,
    )
  # Mixup-style soft targets: the loss is the same mixture of the two.
  soft = 0.3 * onehot + 0.7 * onehot[::-1]
  np.testing.assert_allclose(
      losses.task_loss(logits, soft, "softmax_xent"),
      0.3 * losses.task_loss(logits, labels, "softmax_xent")
      + 0.7 * losses.task_loss(logits, labels[::-1], "softmax_xent"),
      rtol=1e-5,
  )
  # Multi-hot with sigmoid: a sum of per-class binary losses.
  multi = np.array([[1, 0, 1, 0]] * 5, np.float32)
  expected = -(
      multi * jax.nn.log_sigmoid(logits)
      + (1 - multi) * jax.nn.log_sigmoid(-logits)
  ).sum(-1)
  np.testing.assert_allclose(
      losses.task_loss(logits, multi, "sigmoid_xent"), expected, rtol=1e-5
  )
  # Precision@1 for targets: the top class must be a positive one.
  top = np.asarray(logits.argmax(-1))
  np.testing.assert_array_equal(
      losses.top1_correct(logits, multi), (top == 0) | (top == 2)
  )
  np.testing.assert_array_equal(
      losses.top1_correct(logits, labels), top == labels
  )


def _saved_config(workdir):
  with open(os.path.join(workdir, "config.json")) as f:
    return json.load(f)


def _write_saved_config(workdir, saved):
  """Rewrites a run's config.json, as older code would have written it."""
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(saved, f)


def test_a_key_added_since_the_run_started_at_its_default_is_no_difference(
    tmp_path,
):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(_tiny(), workdir)
  # As written by code from before `model.dtype` and `optim.mu_dtype`.
  saved = _saved_config(workdir)
  del saved["model"]["dtype"], saved["optim"]["mu_dtype"]
  _write_saved_config(workdir, saved)
  assert train.train_and_evaluate(_tiny(), workdir)["steps"] == 6
  # At another value it is a difference.
  _write_saved_config(workdir, saved)
  with pytest.raises(run_config.ConfigError, match="model.dtype"):
    train.train_and_evaluate(_tiny(**{"model.dtype": "bfloat16"}), workdir)


def test_a_run_saved_with_a_boolean_exit_early_resumes_and_loads(tmp_path):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(_tiny(), workdir)
  # As written when tape.exit_early was a bool whose default was True.
  saved = _saved_config(workdir)
  assert saved["tape"]["exit_early"] == "auto"
  saved["tape"]["exit_early"] = True
  _write_saved_config(workdir, saved)
  assert train.train_and_evaluate(_tiny(), workdir)["steps"] == 6
  assert analysis.read_run(workdir)[0].tape.exit_early == "auto"
  saved["tape"]["exit_early"] = False
  _write_saved_config(workdir, saved)
  assert analysis.read_run(workdir)[0].tape.exit_early == "never"
  # Saved as False, it is "never": another setting than today's default.
  with pytest.raises(run_config.ConfigError, match="tape.exit_early"):
    train.train_and_evaluate(_tiny(), workdir)


def test_a_removed_key_at_its_retired_meaning_still_resumes_and_loads(
    tmp_path,
):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(_tiny(), workdir)
  # As written by code that still had model.pool_include_padded_tape.
  saved = _saved_config(workdir)
  saved["model"]["pool_include_padded_tape"] = False
  _write_saved_config(workdir, saved)
  assert train.train_and_evaluate(_tiny(), workdir)["steps"] == 6
  loaded, step, _ = analysis.read_run(workdir)
  assert step == 6 and "pool_include_padded_tape" not in loaded.model
  # A run that used the removed feature is refused, naming the key.
  saved["model"]["pool_include_padded_tape"] = True
  _write_saved_config(workdir, saved)
  with pytest.raises(
      run_config.ConfigError, match="model.pool_include_padded_tape=True"
  ):
    analysis.read_run(workdir)
