"""The streamed TFDS source on real TFDS builders over generated files
(`stream_datasets`): resumable, per-process, epoch-permuted batches, eval
counted once, multi-label targets, and its errors. Training on it is in
`test_stream_training.py`.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from adatape import assemble
from adatape import losses
from adatape import run_config
from adatape.data import image_ops
from adatape.data import stream
from configs.imagenet import adatape as imagenet_adatape
from configs.imagenet import vit as imagenet_vit
from configs.jft import adatape as jft_adatape
from configs.jft import finetune as jft_finetune
from configs.jft import vit as jft_vit
from tests import stream_datasets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VAL = stream_datasets.VAL
JFT_CLASSES = stream_datasets.JFT_CLASSES


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
  """{"tfrecord": dir, "array_record": dir, "jft": dir}."""
  return stream_datasets.prepare(str(tmp_path_factory.mktemp("stream")))


def _source(data_dir, process_index=0, process_count=1, **kw):
  kw = {"image_size": 24, "eval_resize": 28, "shuffle_buffer": 7, **kw}
  return stream.Source(
      stream.Config(data_dir=data_dir, **kw),
      seed=5,
      process_index=process_index,
      process_count=process_count,
  )


def _plain(**kw):
  """No randomness but the order: whole image resized, no flip/mixup."""
  return dict(
      crop_area_min=1.0, flip=False, randaug_layers=0, mixup_alpha=0.0, **kw
  )


def _split_images(datasets, split, size=24):
  """Every image of a split, decoded and resized as `_plain` does."""
  ds = tfds.builder("imagenet2012", data_dir=datasets["tfrecord"]).as_dataset(
      split=split, decoders={"image": tfds.decode.SkipDecoding()}
  )
  return np.stack(
      [
          image_ops.value_range(
              tf.cast(
                  tf.image.resize(image_ops.decode(ex["image"]), (size, size)),
                  tf.uint8,
              )
          ).numpy()
          for ex in ds
      ]
  )


def _sorted(images):
  flat = images.reshape(len(images), -1)
  return flat[np.lexsort(flat.T)]


@pytest.mark.parametrize("file_format", ["tfrecord", "array_record"])
def test_resume_at_any_step_gives_the_uninterrupted_batches(
    datasets, file_format
):
  data_dir = datasets[file_format]
  source = _source(data_dir, 1, 2)
  assert source.num_classes == 1000 and source.input_shape == (24, 24, 3)
  # 9 examples per process, batches of 4: steps 2 and 5 straddle epochs.
  stream_batches = [source.train_batch(step, 4) for step in range(7)]
  assert stream_batches[0]["label"].shape == (4, 1000)  # mixup: soft.
  for step in (2, 5, 6):
    resumed = _source(data_dir, 1, 2).train_batch(step, 4)
    for key in ("inputs", "label"):
      np.testing.assert_array_equal(resumed[key], stream_batches[step][key])
  assert not np.array_equal(
      stream_batches[0]["inputs"], stream_batches[1]["inputs"]
  )
  other_process = _source(data_dir, 0, 2).train_batch(0, 4)
  assert not np.array_equal(
      other_process["inputs"], stream_batches[0]["inputs"]
  )


@pytest.mark.parametrize("file_format", ["tfrecord", "array_record"])
def test_each_epoch_is_a_permutation_of_the_process_parts(
    datasets, file_format
):
  data_dir = datasets[file_format]
  whole = _split_images(datasets, "train")
  epochs = {0: [], 1: []}
  for index in (0, 1):
    source = _source(data_dir, index, 2, **_plain())
    rows = np.concatenate(
        [source.train_batch(s, 3)["inputs"] for s in range(6)]
    )  # 2 epochs of 9.
    epochs[0].append(rows[:9])
    epochs[1].append(rows[9:])
  for epoch in (0, 1):
    # The two processes' parts are disjoint and cover the split.
    np.testing.assert_array_equal(
        _sorted(np.concatenate(epochs[epoch])), _sorted(whole)
    )
  # Epoch 1 is another order than epoch 0.
  assert not np.array_equal(epochs[0][0], epochs[1][0])


@pytest.mark.parametrize("file_format", ["tfrecord", "array_record"])
def test_eval_counts_every_example_once_across_two_hosts(datasets, file_format):
  data_dir = datasets[file_format]
  hosts = [_source(data_dir, i, 2) for i in (0, 1)]
  batches = [list(h.eval_batches(4)) for h in hosts]
  assert [len(b) for b in batches] == [2, 2]  # Collectives need equal counts.
  assert [[int(b["mask"].sum()) for b in host] for host in batches] == [
      [4, 2],
      [4, 1],
  ]
  seen = np.concatenate(
      [b["inputs"][b["mask"] > 0] for host in batches for b in host]
  )
  labels = np.concatenate(
      [b["label"][b["mask"] > 0] for host in batches for b in host]
  )
  # The reference reads the TFRecord copy (same examples).
  ds = tfds.builder("imagenet2012", data_dir=datasets["tfrecord"]).as_dataset(
      split="validation"
  )
  reference = [
      (
          stream.images.eval_image(ex["image"], hosts[0].config).numpy(),
          int(ex["label"]),
      )
      for ex in ds
  ]
  assert len(seen) == VAL
  np.testing.assert_array_equal(
      _sorted(seen), _sorted(np.stack([r[0] for r in reference]))
  )
  assert sorted(labels.tolist()) == sorted(r[1] for r in reference)
  for host in batches:  # Padding rows are zeros with mask 0.
    assert not host[-1]["inputs"][host[-1]["mask"] == 0].any()


def test_multi_label_targets_and_sigmoid_loss(datasets):
  source = _source(
      datasets["jft"], dataset="fake_jft", label_key="labels", **_plain()
  )
  assert source.num_classes == JFT_CLASSES and source.multi_label
  batch = source.train_batch(0, 24)
  targets = batch["label"]
  assert targets.shape == (24, JFT_CLASSES) and targets.dtype == np.float32
  assert set(np.unique(targets)) <= {0.0, 1.0}
  assert 1 <= targets.sum(1).min() and targets.sum(1).max() <= 3
  # One epoch of 24 = the split: the label sets' histogram matches.
  ds = tfds.builder("fake_jft", data_dir=datasets["jft"]).as_dataset(
      split="train"
  )
  expected = np.zeros(JFT_CLASSES)
  for ex in ds:
    expected[ex["labels"].numpy()] += 1
  np.testing.assert_array_equal(targets.sum(0), expected)
  logits = np.random.default_rng(0).normal(size=targets.shape)
  loss = np.asarray(losses.task_loss(logits, targets, "sigmoid_xent"))
  p = 1 / (1 + np.exp(-logits))
  manual = -(targets * np.log(p) + (1 - targets) * np.log(1 - p)).sum(-1)
  np.testing.assert_allclose(loss, manual, rtol=1e-5)
  # precision@1: the top logit is one of the example's labels.
  top = np.where(targets[np.arange(24), logits.argmax(-1)] > 0, 1.0, 0.0)
  np.testing.assert_array_equal(
      np.asarray(losses.top1_correct(logits, targets)), top
  )


def test_bad_data_configs_are_clear_errors(datasets, tmp_path):
  with pytest.raises(
      run_config.ConfigError,
      match="not prepared.*tfds build imagenet2012 " "--manual_dir=",
  ):
    _source(str(tmp_path / "empty"))
  assert not (tmp_path / "empty").exists()
  with pytest.raises(run_config.ConfigError, match="data.label_key"):
    _source(datasets["tfrecord"], label_key="labels")
  with pytest.raises(run_config.ConfigError, match="data.image_key"):
    _source(datasets["tfrecord"], image_key="file_name")
  with pytest.raises(run_config.ConfigError, match="data.num_classes=7"):
    _source(datasets["tfrecord"], num_classes=7)
  with pytest.raises(run_config.ConfigError, match="data split 'val'"):
    _source(datasets["tfrecord"], eval_split="val")
  with pytest.raises(run_config.ConfigError, match="data.shuffle_buffer"):
    stream.Config(shuffle_buffer=0)
  for module, arg, key in (
      (imagenet_vit, "variant=S/15", "variant"),
      (imagenet_adatape, "bank=both", "bank"),
      (jft_adatape, "variant=B/16", "dataset"),
      (jft_finetune, "method=vit", "init_from"),
  ):
    with pytest.raises(run_config.ConfigError, match=key):
      module.get_config(arg)


def test_command_line_says_how_to_prepare_imagenet(tmp_path):
  proc = subprocess.run(
      [
          sys.executable,
          "-m",
          "adatape.main",
          f"--config=configs/imagenet/vit.py:data_dir={tmp_path / 'none'}",
          f"--workdir={tmp_path / 'run'}",
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == 2
  last = proc.stderr.strip().splitlines()[-1]
  assert "not prepared" in last and "--manual_dir" in last
  assert not (tmp_path / "run").exists()


def test_paper_configs_build_for_every_variant_and_bank(datasets):
  for variant in ("S/16", "B/16", "B/32"):
    vit = imagenet_vit.get_config(f"variant={variant}")
    assert vit.total_steps == 93_600 and vit.optim.weight_decay == 0.1
    for bank in ("input", "learn"):
      config = imagenet_adatape.get_config(f"variant={variant},bank={bank}")
      assert config.tape.num_tokens == 10 and config.tape.epsilon == 2.0
      assert config.tape.key_split == config.model.num_heads
      assert config.model.head_bias_init == -6.9
  # The JFT family: pre-training on a multi-label dataset, both methods,
  # and fine-tuning either on ImageNet.
  for module in (jft_vit, jft_adatape):
    run = assemble.prepare(
        module.get_config(
            f"dataset=fake_jft,data_dir={datasets['jft']},variant=B/16"
        )
    )
    assert run.source.num_classes == JFT_CLASSES and run.source.multi_label
  for method in ("vit", "adatape"):
    config = jft_finetune.get_config(
        f"init_from=/pretrained,method={method},"
        f"data_dir={datasets['tfrecord']}"
    )
    assert config.data.image_size == 384 and config.optim.name == "sgd"
    assert assemble.prepare(config).source.num_classes == 1000
  points = []
  imagenet_adatape.sweep(lambda **kw: points.append(kw))
  assert len(points) == 12
  for point in points:  # Every sweep point is a valid S/16 run.
    config = imagenet_adatape.get_config(f"data_dir={datasets['tfrecord']}")
    for key, value in point.items():
      section, name = key.split(".")
      config[section][name] = value
    assemble.prepare(config)
