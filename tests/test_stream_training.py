"""Runs on the streamed TFDS source (`stream_datasets`): few-step
training of each ImageNet method, under `tfds.testing.mock_data` and in two
processes; the heatmap, table and throughput scripts on a streamed run; JFT
pre-training then ImageNet fine-tuning. A file of its own, so that these
runs and the source's tests in `test_stream.py` share the two workers.
"""

import json
import os
import re
import socket
import subprocess
import sys
import types

import numpy as np
import pytest
import tensorflow_datasets as tfds

from adatape import analysis
from adatape import init_from
from adatape import models
from adatape import run_config
from adatape import train
from configs.imagenet import adatape as imagenet_adatape
from configs.imagenet import vit as imagenet_vit
from configs.jft import adatape as jft_adatape
from configs.jft import finetune as jft_finetune
from experiments import heatmaps
from experiments import imagenet_table
from experiments import throughput
from tests import stream_datasets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VAL = stream_datasets.VAL


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
  """{"tfrecord": dir, "array_record": dir, "jft": dir}."""
  return stream_datasets.prepare(str(tmp_path_factory.mktemp("stream")))


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


def test_throughput_vary_times_each_value_of_one_key():
  vit = imagenet_vit.get_config("tiny")
  ada = imagenet_adatape.get_config("tiny")
  loaded = throughput.varied(
      [("vit", vit, None), ("ada", ada, None)], "tape.scan_unroll=1, 4"
  )
  # A ViT has no tape: it runs once, as the reference.
  assert [label for label, *_ in loaded] == [
      "vit",
      "ada tape.scan_unroll=1",
      "ada tape.scan_unroll=4",
  ]
  assert loaded[0][1] is vit
  assert [c.tape.scan_unroll for _, c, _, _ in loaded[1:]] == [1, 4]
  assert all(options is None for *_, options in loaded)
  assert ada.tape.scan_unroll == 1  # Copies: the loaded config is kept.
  with pytest.raises(
      run_config.ConfigError, match="^-v: tape.epsilon is not a section"
  ):
    run_config.set_from_text(ada, "tape.epsilon.x", "1", "-v")
  model = models.build(loaded[2][1], input_shape=(32, 32, 3), num_classes=10)
  assert model.config.tape.scan_unroll == 4
  # Each model's step times at every value against the first.
  benches = [types.SimpleNamespace(label=label) for label, *_ in loaded]
  rows = {
      "vit": {"train_step_s": 1.0, "infer_step_s": 1.0},
      "ada tape.scan_unroll=1": {"train_step_s": 2.0, "infer_step_s": 1.0},
      "ada tape.scan_unroll=4": {"train_step_s": 1.5, "infer_step_s": 1.1},
  }
  lines = []
  throughput.compare_values(benches, rows, "tape.scan_unroll=1,4", lines.append)
  assert lines == [
      "ada: train step time at tape.scan_unroll=V / at 1: 4 0.7500",
      "ada: infer step time at tape.scan_unroll=V / at 1: 4 1.1000",
  ]


def test_throughput_vary_sets_an_xla_option_on_every_program():
  vit = imagenet_vit.get_config("tiny")
  loaded = throughput.varied(
      [("vit", vit, None)], "xla_cpu_enable_fast_math=false,true,3,fusion"
  )
  assert [options for *_, options in loaded] == [
      {"xla_cpu_enable_fast_math": False},
      {"xla_cpu_enable_fast_math": True},
      {"xla_cpu_enable_fast_math": 3},
      {"xla_cpu_enable_fast_math": "fusion"},
  ]
  assert all(config is vit for _, config, _, _ in loaded)
  # The option reaches both compiled programs: without XLA's fusion pass
  # the train step and the forward compile to other HLO.
  plain = throughput.Bench("plain", vit, None, batch=2, num_classes=10)
  unfused = throughput.Bench(
      "unfused",
      vit,
      None,
      batch=2,
      num_classes=10,
      compiler_options={"xla_disable_hlo_passes": "fusion"},
  )
  assert plain.train_hlo.count("fusion(") != unfused.train_hlo.count("fusion(")
  assert plain.infer_hlo.count("fusion(") != unfused.infer_hlo.count("fusion(")


@pytest.mark.parametrize(
    "vary, message",
    [
        ("tape.scan_unroll=1", "must be KEY=V1,V2,... with two values"),
        ("=1,2", "must be KEY=V1,V2,... with two values"),
        ("tape.nope=1,2", "tape.nope is not a key of any model's config"),
        ("xla_nope=1,2", "No such compile option: 'xla_nope'"),
        ("tape.scan_unroll=1,x", "tape.scan_unroll='x' is not a valid int"),
        ("tape.layers=1,2", "tape.layers holds tuple, not a bool"),
        ("tape.epsilon.x=1,2", "tape.epsilon.x is not a key of any model's"),
    ],
)
def test_throughput_bad_vary_is_a_one_line_error(monkeypatch, vary, message):
  monkeypatch.setattr(
      sys,
      "argv",
      [
          "throughput.py",
          "--spec=configs/imagenet/vit.py:tiny",
          "--spec=configs/imagenet/adatape.py:tiny",
          f"--vary={vary}",
      ],
  )
  with pytest.raises(SystemExit, match=f"^error: .*{re.escape(message)}"):
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
  # The data path is the same for every model: the ViT compiles in about
  # half the AdaTape's time (AdaTape in two processes: test_multiprocess),
  # and one eval and one checkpoint, at the end, are all this checks.
  with socket.socket() as sock:
    sock.bind(("localhost", 0))
    port = sock.getsockname()[1]
  workdir = str(tmp_path / "run")
  env = dict(
      os.environ,
      XLA_FLAGS=os.environ["XLA_FLAGS"]
      + " --xla_force_host_platform_device_count=1",
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
              f"--config=configs/imagenet/vit.py:tiny,"
              f"data_dir={datasets['tfrecord']}",
              "--config.total_steps=4",
              "--config.eval_every_steps=4",
              "--config.checkpoint_every_steps=4",
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
