"""The streamed TFDS source on real TFDS builders over generated files.

`imagenet2012` is built by TFDS's own builder from a manual dir of
generated JPEG tars in ImageNet's layout (train: a tar of per-synset tars;
val: a flat tar), in both file formats; a JFT-style multi-label dataset is
built by a small builder defined here. Nothing is downloaded.
"""

import io
import json
import os
import socket
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from adatape import analysis
from adatape import assemble
from adatape import init_from
from adatape import losses
from adatape import run_config
from adatape import train
from adatape.data import image_ops
from adatape.data import stream
from configs.imagenet import adatape as imagenet_adatape
from configs.imagenet import vit as imagenet_vit
from configs.jft import adatape as jft_adatape
from configs.jft import finetune as jft_finetune
from configs.jft import vit as jft_vit
from experiments import heatmaps
from experiments import imagenet_table
from experiments import throughput

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNSETS = ("n01440764", "n01443537", "n01484850")
PER_SYNSET = 6  # 18 train images; 2 processes read 9 each.
VAL = 11  # Uneven: 6 + 5 over 2 processes, 4 + 2 / 4 + 1 in batches of 4.
JFT_CLASSES = 12


def _jpeg(rng) -> bytes:
  h, w = rng.integers(36, 72, 2)
  image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  return tf.io.encode_jpeg(image).numpy()


def _add(tar, name: str, data: bytes):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def _imagenet_manual_dir(path: str) -> str:
  """ILSVRC2012_img_{train,val}.tar with generated JPEGs of random sizes."""
  rng = np.random.default_rng(0)
  os.makedirs(path)
  with tarfile.open(
      os.path.join(path, "ILSVRC2012_img_train.tar"), "w"
  ) as outer:
    for synset in SYNSETS:
      inner_bytes = io.BytesIO()
      with tarfile.open(fileobj=inner_bytes, mode="w") as inner:
        for i in range(PER_SYNSET):
          _add(inner, f"{synset}_{i}.JPEG", _jpeg(rng))
      _add(outer, f"{synset}.tar", inner_bytes.getvalue())
  with tarfile.open(os.path.join(path, "ILSVRC2012_img_val.tar"), "w") as t:
    for i in range(VAL):
      _add(t, f"ILSVRC2012_val_{i + 1:08d}.JPEG", _jpeg(rng))
  return path


class FakeJft(tfds.core.GeneratorBasedBuilder):
  """A JFT-shaped dataset: JPEGs with a set of 1-3 labels each."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(encoding_format="jpeg"),
                "labels": tfds.features.Sequence(
                    tfds.features.ClassLabel(num_classes=JFT_CLASSES)
                ),
            }
        ),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {
        "train": self._generate_examples(24, 1),
        "validation": self._generate_examples(7, 2),
    }

  def _generate_examples(self, count, seed):  # pylint: disable=arguments-differ
    rng = np.random.default_rng(seed)
    for i in range(count):
      labels = rng.choice(JFT_CLASSES, rng.integers(1, 4), replace=False)
      yield i, {"image": _jpeg(rng), "labels": sorted(labels.tolist())}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
  """{"tfrecord": dir, "array_record": dir, "jft": dir}."""
  root = tmp_path_factory.mktemp("stream")
  manual = _imagenet_manual_dir(str(root / "manual"))
  dirs = {}
  for file_format in ("tfrecord", "array_record"):
    dirs[file_format] = str(root / file_format)
    tfds.builder(
        "imagenet2012", data_dir=dirs[file_format], file_format=file_format
    ).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual)
    )
  dirs["jft"] = str(root / "jft")
  FakeJft(data_dir=dirs["jft"]).download_and_prepare()
  return dirs


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


def test_few_step_vit_training_on_imagenet2012(datasets, tmp_path):
  # AdaTape-ViT trains in the tests below (input bank from ArrayRecord,
  # learnable bank under mock_data).
  config = imagenet_vit.get_config(f"tiny,data_dir={datasets['tfrecord']}")
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert results["eval/examples"] == VAL
  assert np.isfinite(results["eval/loss"])


def test_heatmap_table_and_throughput_of_a_streamed_run(
    datasets, tmp_path, monkeypatch
):
  config = imagenet_adatape.get_config(
      f"tiny,bank=input,data_dir={datasets['array_record']}"
  )
  workdir = str(tmp_path / "run")
  results = train.train_and_evaluate(config, workdir)
  assert results["eval/examples"] == VAL
  # The heatmap's reads, over the streamed eval split: K entries per valid
  # tape token, on the 8 x 8 grid of the 4-px bank patches.
  reads, _ = heatmaps.bank_reads(workdir)
  assert reads.shape == (VAL, (32 // 4) ** 2)
  k = int(config.tape.num_tokens // config.tape.epsilon)
  np.testing.assert_allclose(
      reads.sum(1).mean(), k * results["eval/tape_length"], rtol=1e-5
  )
  row = imagenet_table.row(workdir)
  out = tmp_path / "table.md"
  monkeypatch.setattr(
      sys, "argv", ["imagenet_table.py", f"--root={tmp_path}", f"--out={out}"]
  )
  imagenet_table.main()  # --root finds the run; md and csv are written.
  assert "| run | AdaTape-ViT |" in out.read_text()
  assert (tmp_path / "table.csv").read_text().count("\n") == 2
  assert row["top1"] == results["eval/accuracy"]
  assert row["model"] == "AdaTape-ViT" and row["bank"] == "input"
  assert row["images_per_s"] == pytest.approx(
      results["steps_per_sec"] * config.batch_size
  )
  assert 0 < row["effective_gflops"] <= row["static_gflops"]
  vit = throughput.Bench(
      "vit", imagenet_vit.get_config("tiny"), None, batch=4, num_classes=1000
  )
  run_config_, _, params = analysis.read_run(workdir)
  run = throughput.Bench(
      "run",
      run_config_,
      params,
      batch=4,
      num_classes=throughput.head_classes(params),
  )
  rows = throughput.run([vit, run], repeats=1)
  assert rows["vit"]["effective_gflops"] == rows["vit"]["static_gflops"]
  assert rows["vit"]["tape_length"] is None
  # The tape makes the AdaTape forward cost more than the ViT one, and
  # its unread slots are what separates static from effective.
  assert rows["run"]["static_gflops"] > rows["vit"]["static_gflops"]
  assert rows["run"]["effective_gflops"] == pytest.approx(
      rows["run"]["static_gflops"]
  ) or (
      rows["run"]["effective_gflops"] < rows["run"]["static_gflops"]
      and rows["run"]["tape_length"] < config.tape.num_tokens
  )
  for r in rows.values():
    assert r["train_images_per_s"] > 0 and r["infer_images_per_s"] > 0
  # --profile: each model's traced train steps, ranked by XLA op.
  lines = []
  throughput.profile([vit, run], str(tmp_path / "prof"), 5, lines.append)
  headers = [i for i, line in enumerate(lines) if "train step, by XLA" in line]
  assert [lines[i].split(":")[0].strip() for i in headers] == ["vit", "run"]
  for i in headers:
    assert f"{throughput.PROFILE_STEPS} run(s)" in lines[i + 2]
    assert "jit_train_step" in lines[i + 2]
    # The top 5 ops, then the rest added up in one row.
    assert "calls/step  op" in lines[i + 3]
    assert lines[i + 9].endswith(" others)")
    assert "calls/step  kind of op" in lines[i + 10]


def test_throughput_counts_below_one_are_one_line_errors(monkeypatch):
  for flag in ("--batch=0", "--repeats=0", "--profile_top=0"):
    monkeypatch.setattr(sys, "argv", ["throughput.py", flag])
    with pytest.raises(SystemExit, match=f"^error: {flag} must be >= 1$"):
      throughput.main()


def test_few_step_training_under_tfds_mock_data(datasets, tmp_path):
  # mock_data replaces every read with random examples of the dataset's
  # features (random-size JPEGs, 1000 classes); the split sizes are the
  # prepared dataset's.
  config = imagenet_adatape.get_config(
      f"tiny,bank=learn,data_dir={datasets['tfrecord']}"
  )
  # mock_data fakes the file system while `as_dataset` runs (eval opens a
  # dataset), which would catch an async checkpoint in flight: save only
  # at the end, after the last eval.
  config.checkpoint_every_steps = config.total_steps
  with tfds.testing.mock_data(
      num_examples=16,
      policy=tfds.testing.MockPolicy.USE_FILES,
      data_dir=datasets["tfrecord"],
  ):
    results = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert results["eval/examples"] == VAL
  assert np.isfinite(results["eval/loss"])
  assert 0 < results["eval/tape_length"] <= config.tape.num_tokens


def test_two_processes_read_their_parts_and_count_eval_once(datasets, tmp_path):
  # Two real processes (jax.distributed on localhost), each reading its
  # even_splits part; eval batches are padded to equal counts, so the
  # collectives line up, and the masked sums count all 11 examples once.
  with socket.socket() as sock:
    sock.bind(("localhost", 0))
    port = sock.getsockname()[1]
  workdir = str(tmp_path / "run")
  env = dict(
      os.environ,
      XLA_FLAGS="--xla_force_host_platform_device_count=1",
      ADATAPE_DISTRIBUTED="1",
      ADATAPE_COORDINATOR=f"localhost:{port}",
      ADATAPE_NUM_PROCESSES="2",
  )
  procs = [
      subprocess.Popen(
          [
              sys.executable,
              "-m",
              "adatape.main",
              f"--workdir={workdir}",
              f"--config=configs/imagenet/adatape.py:tiny,"
              f"data_dir={datasets['tfrecord']}",
              "--config.total_steps=4",
          ],
          cwd=REPO,
          stdout=subprocess.PIPE,
          stderr=subprocess.PIPE,
          text=True,
          env=dict(env, ADATAPE_PROCESS_ID=str(i)),
      )
      for i in range(2)
  ]
  outputs = [p.communicate(timeout=300) for p in procs]
  for proc, (_, err) in zip(procs, outputs):
    assert proc.returncode == 0, err[-3000:]
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  assert results["num_devices"] == 2 and results["eval/examples"] == VAL


def test_jft_pretraining_then_imagenet_finetuning(datasets, tmp_path, capsys):
  pretrain = jft_adatape.get_config(
      f"tiny,dataset=fake_jft,data_dir={datasets['jft']}"
  )
  assert pretrain.loss == "sigmoid_xent"
  results = train.train_and_evaluate(pretrain, str(tmp_path / "jft"))
  assert results["eval/examples"] == 7
  finetune = jft_finetune.get_config(
      f"tiny,init_from={tmp_path / 'jft'},method=adatape,"
      f"data_dir={datasets['tfrecord']}"
  )
  assert finetune.optim.name == "sgd" and finetune.data.image_size == 48
  capsys.readouterr()
  results = train.train_and_evaluate(finetune, str(tmp_path / "ft"))
  assert results["eval/examples"] == VAL
  # 32 -> 48 px: both position embeddings follow the larger patch grids
  # (4x4 -> 6x6 patches, 8x8 -> 12x12 bank entries); the head is new.
  printed = capsys.readouterr().out
  assert (
      "resampled to this image size: bank/posembed_input_bank, "
      "stem/posembed_input;" in printed
  )
  assert (
      "fresh: head/output_projection/bias, "
      "head/output_projection/kernel\n" in printed
  )


def test_resample_grid_keeps_a_smooth_embedding():
  # A linear ramp over the grid stays a ramp (bilinear), at the new size.
  ramp = np.linspace(-1, 1, 4, dtype=np.float32)
  grid = (ramp[:, None, None] + 2 * ramp[None, :, None]) * np.ones(
      (1, 1, 3), np.float32
  )
  out = init_from.resample_grid(grid.reshape(1, 16, 3), 64).reshape(8, 8, 3)
  assert out.dtype == np.float32
  assert np.all(np.diff(out[2:6, 3, 0]) > 0) and np.all(
      np.diff(out[3, 2:6, 0]) > 0
  )
  np.testing.assert_allclose(out.mean(), grid.mean(), atol=1e-6)
  np.testing.assert_array_equal(
      init_from.resample_grid(grid.reshape(1, 16, 3), 16),
      grid.reshape(1, 16, 3),
  )
