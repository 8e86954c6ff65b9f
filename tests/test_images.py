"""The in-memory TFDS image source on the locally built digits dataset:
determinism, layout independence, exact eval across hosts, errors, and
few-step training of ViT and AdaTape-ViT."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from adatape import assemble
from adatape import run_config
from adatape import train
from adatape.data import digits_builder
from adatape.data import images
from configs.digits import adatape as digits_adatape
from configs.digits import vit as digits_vit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tfds"))
  digits_builder.prepare(path)
  return path


def _source(data_dir, process_index=0, process_count=1, **kw):
  config = images.Config(data_dir=data_dir, **kw)
  return images.Source(
      config, seed=3, process_index=process_index, process_count=process_count
  )


def test_batches_are_a_function_of_the_step_and_not_of_the_layout(data_dir):
  one = _source(data_dir)
  assert one.input_shape == (32, 32, 3) and one.num_classes == 10
  a = one.train_batch(5, 16)
  np.testing.assert_array_equal(a["inputs"], one.train_batch(5, 16)["inputs"])
  assert not np.array_equal(a["inputs"], one.train_batch(6, 16)["inputs"])
  assert a["inputs"].dtype == np.float32
  assert a["inputs"].min() >= -1.0 and a["inputs"].max() <= 1.0
  halves = [_source(data_dir, i, 2).train_batch(5, 8) for i in (0, 1)]
  for key in ("inputs", "label"):
    np.testing.assert_array_equal(
        np.concatenate([h[key] for h in halves]), a[key]
    )


def test_an_epoch_visits_every_training_example_once(data_dir):
  source = _source(data_dir, crop_area_min=1.0, flip=False)
  total = len(source._train["label"])  # pylint: disable=protected-access
  batch = 100
  labels = np.concatenate(
      [source.train_batch(s, batch)["label"] for s in range(total // batch)]
  )
  counts = np.bincount(labels, minlength=10)
  expected = np.bincount(source._train["label"][: len(labels)], minlength=10)  # pylint: disable=protected-access
  # Same total; and with 15 full batches, exactly the first 1500 positions
  # of epoch 0, a permutation of the whole training split.
  assert len(labels) == total
  np.testing.assert_array_equal(counts, expected)


def test_eval_counts_every_example_once_across_two_hosts(data_dir):
  hosts = [_source(data_dir, i, 2) for i in (0, 1)]
  full = hosts[0].eval_set()
  seen = []
  batches = [list(h.eval_batches(40)) for h in hosts]
  assert len(batches[0]) == len(batches[1])  # Collectives need equal counts.
  for host_batches in batches:
    for b in host_batches:
      valid = b["mask"] > 0
      seen.append(b["inputs"][valid])
  seen = np.concatenate(seen)
  assert len(seen) == len(full["label"]) == 297
  # Every eval image exactly once (297 = 3 batches of 2 x 40, last uneven).
  order = np.lexsort(seen.reshape(len(seen), -1).T)
  ref = np.lexsort(full["inputs"].reshape(297, -1).T)
  np.testing.assert_array_equal(seen[order], full["inputs"][ref])


def test_mixup_gives_soft_labels(data_dir):
  batch = _source(data_dir, mixup_alpha=0.5).train_batch(0, 16)
  assert batch["label"].shape == (16, 10)
  np.testing.assert_allclose(batch["label"].sum(1), 1.0, rtol=1e-5)
  assert np.any((batch["label"] > 0) & (batch["label"] < 1))


def test_unprepared_unknown_and_bad_keys_are_clear_errors(data_dir, tmp_path):
  with pytest.raises(
      run_config.ConfigError, match="not prepared.*digits_builder"
  ):
    _source(str(tmp_path / "empty"))
  assert not (tmp_path / "empty").exists()
  with pytest.raises(run_config.ConfigError, match="not a TFDS dataset"):
    _source(data_dir, dataset="no_such_dataset_xyz")
  with pytest.raises(run_config.ConfigError, match="data.image_key"):
    _source(data_dir, image_key="img")
  with pytest.raises(run_config.ConfigError, match="data.crop_area_min"):
    images.Config(crop_area_min=0.0)


@pytest.mark.parametrize("config_module", [digits_vit, digits_adatape])
def test_few_step_training_of_vit_and_adatape(
    config_module, data_dir, tmp_path
):
  config = config_module.get_config(f"data_dir={data_dir},tiny")
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert results["eval/examples"] == 297
  assert 0.0 <= results["eval/accuracy"] <= 1.0
  if config.model.name == "adatape":
    assert results["eval/tape_length"] > 0
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.heatmaps",
            f"--workdir={tmp_path / 'run'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert os.path.getsize(tmp_path / "run" / "tape_heatmap.png") > 1000
    with open(tmp_path / "run" / "tape_heatmap.json") as f:
      heat = json.load(f)
    # Every valid tape token merges K = floor(T / epsilon) bank entries.
    k = int(config.tape.num_tokens // config.tape.epsilon)
    assert heat["mean_entries_read"] == pytest.approx(
        k * results["eval/tape_length"], rel=1e-5
    )
    assert len(heat["mean_reads_per_entry"]) == (32 // 4) ** 2


def test_command_line_names_the_missing_dataset(tmp_path):
  proc = subprocess.run(
      [
          sys.executable,
          "-m",
          "adatape.main",
          f"--config=configs/digits/vit.py:data_dir={tmp_path / 'none'}",
          f"--workdir={tmp_path / 'run'}",
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == 2
  assert "not prepared" in proc.stderr.strip().splitlines()[-1]
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("config_module", [digits_vit, digits_adatape])
def test_digits_configs_build(config_module, data_dir):
  for arg in (
      f"data_dir={data_dir}",
      f"data_dir={data_dir},tiny",
      f"data_dir={data_dir},source=stream",
  ):
    run = assemble.prepare(config_module.get_config(arg))
    assert run.source.input_shape == (32, 32, 3)
    assert run.source.num_classes == 10
  with pytest.raises(run_config.ConfigError, match="config arg"):
    config_module.get_config("seq_len=3")
