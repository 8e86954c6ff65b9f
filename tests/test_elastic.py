"""Elastic inference: per-bucket execution equals the padded run."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from adatape import elastic
from adatape import models
from adatape import run_config

# Bucketed and padded runs sum attention and pooling over different
# numbers of (zero-weight) slots; XLA may order those sums differently.
TOLERANCE = 1e-5


def _model(**tape):
  c = ml_collections.ConfigDict()
  c.model = dict(
      name="adatape",
      width=32,
      depth=3,
      num_heads=4,
      mlp_dim=64,
      stem="flatten",
      posemb=False,
  )
  c.tape = dict(
      dict(num_tokens=8, epsilon=2.0, key_split=4, layers=(1,)), **tape
  )
  return models.build(c, input_shape=(32, 3), num_classes=4)


@pytest.fixture(scope="module")
def setup():
  """A model whose tapes differ in length across 64 examples: a random head
  and bank (both start at or near zero, which would halt every example
  alike)."""
  model = _model()
  rng = np.random.default_rng(0)
  x = jax.nn.one_hot(rng.integers(0, 3, (64, 32)), 3)
  params = jax.jit(lambda k, x: model.init(k, x, train=False))(
      jax.random.key(0), x[:1]
  )["params"]
  params = jax.tree_util.tree_map_with_path(
      lambda path, leaf: leaf
      + (
          0.2 * jax.random.normal(jax.random.key(5), leaf.shape)
          if "head" in jax.tree_util.keystr(path)
          or "bank" in jax.tree_util.keystr(path)
          else 0.0
      ),
      params,
  )
  return model, params, np.asarray(x)


def _padded(model, params, x):
  return jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))(
      params, x
  )


def test_mixed_lengths_equal_the_padded_run_per_example(setup):
  model, params, x = setup
  padded = _padded(model, params, x)
  lengths = np.asarray(padded.metrics_B["tape_length"])
  assert len(set(lengths.tolist())) >= 3  # A mixed batch.
  out = elastic.Predictor(
      model, params, buckets=(2, 4, 6, 8), chunk=8, devices=1
  )(x)
  np.testing.assert_allclose(out.logits, padded.logits, atol=TOLERANCE)
  np.testing.assert_array_equal(out.tape_length, lengths)
  # Each example ran in a bucket holding its tape, and (sorted into chunks
  # of 8) only a chunk straddling two buckets runs any example longer than
  # its own smallest bucket: at most 3 chunks for 4 buckets.
  assert np.all(out.bucket >= lengths)
  own = np.asarray((2, 4, 6, 8))[np.searchsorted((2, 4, 6, 8), lengths)]
  assert (out.bucket != own).sum() <= 3 * 8
  assert (out.bucket == own).mean() > 0.5
  # The analytic FLOPs are the padded model's (valid tokens only).
  np.testing.assert_allclose(out.flops, padded.flops_B, rtol=1e-6)


def test_a_batch_split_over_devices_equals_the_padded_run(setup):
  model, params, x = setup
  assert len(jax.local_devices()) == 8  # tests/conftest.py
  padded = _padded(model, params, x)
  lengths = np.asarray(padded.metrics_B["tape_length"])
  predictor = elastic.Predictor(model, params, chunk=8)  # Every device.
  out = predictor(x)
  np.testing.assert_allclose(out.logits, padded.logits, atol=TOLERANCE)
  np.testing.assert_array_equal(out.tape_length, lengths)
  # Each device sorted and bucketed its own 8 examples: one chunk, at the
  # smallest bucket holding that share's longest tape.
  buckets = np.asarray((2, 4, 6, 8))
  longest = lengths.reshape(8, 8).max(1)
  expected = np.repeat(buckets[np.searchsorted(buckets, longest)], 8)
  np.testing.assert_array_equal(out.bucket, expected)
  # On one device the chunks come from the whole batch, sorted.
  one = elastic.Predictor(model, params, chunk=8, devices=1)(x)
  assert not np.array_equal(one.bucket, out.bucket)
  # A batch that does not divide (filled up to 64), and one smaller than
  # the devices.
  for size in (61, 3):
    out = predictor(x[:size])
    np.testing.assert_allclose(out.logits, padded.logits[:size], atol=TOLERANCE)
    np.testing.assert_array_equal(out.tape_length, lengths[:size])
    assert np.all(out.bucket >= lengths[:size])


def test_groups_and_tuned_buckets_equal_the_padded_run(setup):
  model, params, x = setup
  padded = _padded(model, params, x)
  lengths = np.asarray(padded.metrics_B["tape_length"])
  # 64 examples in groups of 24: the last group is filled up with copies.
  out = elastic.Predictor(model, params, chunk=8, group=24)(x)
  np.testing.assert_allclose(out.logits, padded.logits, atol=TOLERANCE)
  np.testing.assert_array_equal(out.tape_length, lengths)
  assert np.all(out.bucket >= lengths)
  tuned = elastic.Predictor(
      model, params, buckets="tuned", chunk=8, tune_repeats=1
  )
  assert sorted(tuned.seconds) == list(range(1, 9))
  assert tuned.buckets == elastic.fastest_buckets(tuned.seconds)
  out = tuned(x)
  np.testing.assert_allclose(out.logits, padded.logits, atol=TOLERANCE)
  assert set(out.bucket.tolist()) <= set(tuned.buckets)
  assert np.all(out.bucket >= lengths)


def test_fastest_buckets_keep_the_lengths_no_longer_one_beats():
  # 3 runs slower than 4, and 1 than 2: a chunk of those runs longer.
  seconds = {1: 1.0, 2: 0.9, 3: 1.5, 4: 1.4, 5: 2.0}
  assert elastic.fastest_buckets(seconds) == (2, 4, 5)
  assert elastic.fastest_buckets({1: 3.0, 2: 2.0, 3: 1.0}) == (3,)
  assert elastic.fastest_buckets({1: 1.0, 2: 2.0, 3: 3.0}) == (1, 2, 3)


def test_every_example_is_computed_once(setup):
  model, params, x = setup
  lengths = np.asarray(_padded(model, params, x).metrics_B["tape_length"])
  for chunk in (1, 7, 8, 64, 100):
    order, bucket_index = elastic.schedule(
        jnp.asarray(lengths), (3, 5, 8), chunk
    )
    order = np.asarray(order)
    num_chunks = -(-len(x) // chunk)
    assert order.shape == (num_chunks * chunk,)
    # The first B rows are a permutation (each example once); the rest pad.
    assert sorted(order[: len(x)].tolist()) == list(range(len(x)))
    assert np.all(np.diff(lengths[order[: len(x)]]) >= 0)  # Sorted.
    longest = lengths[order].reshape(num_chunks, chunk).max(1)
    buckets = np.asarray((3, 5, 8))[np.asarray(bucket_index)]
    assert np.all(buckets >= longest)
    assert np.all(
        (buckets == 3)
        | (np.asarray((0, 3, 5))[np.asarray(bucket_index)] < longest)
    )


def test_uniform_lengths_and_batch_of_one(setup):
  model, params, x = setup
  padded = _padded(model, params, x)
  lengths = np.asarray(padded.metrics_B["tape_length"])
  same = x[lengths == np.bincount(lengths).argmax()][:5]
  predictor = elastic.Predictor(model, params)
  out = predictor(same)
  assert len(set(out.bucket.tolist())) == 1
  np.testing.assert_allclose(
      out.logits, _padded(model, params, same).logits, atol=TOLERANCE
  )
  one = predictor(x[:1])
  np.testing.assert_allclose(
      one.logits, _padded(model, params, x[:1]).logits, atol=TOLERANCE
  )


@pytest.mark.parametrize(
    "buckets, message",
    [
        ("", "--buckets is empty; give tape lengths ending at T=8"),
        (
            "2,4,6",
            "--buckets=2,4,6 must be tape lengths in [1, 8] whose "
            "largest is T=8",
        ),
        ("0,8", "--buckets=0,8 must be tape lengths in [1, 8]"),
        ("2,x,8", "--buckets='2,x,8' must be comma-separated tape lengths"),
    ],
)
def test_bad_buckets_are_one_line_errors(buckets, message):
  with pytest.raises(run_config.ConfigError) as raised:
    elastic.parse_buckets(buckets, 8)
  assert str(raised.value).startswith(message)
  assert "\n" not in str(raised.value)
  assert elastic.parse_buckets("8,2,4,4", 8) == (2, 4, 8)
  assert elastic.default_buckets(8) == (2, 4, 6, 8)
  assert elastic.default_buckets(10) == (3, 5, 8, 10)


def test_models_it_cannot_run_are_refused(setup):
  _, params, _ = setup
  with pytest.raises(run_config.ConfigError, match="one tape"):
    elastic.Predictor(_model(layers=(1, 2)), params)
  with pytest.raises(run_config.ConfigError, match="chunk=0 must be >= 1"):
    elastic.Predictor(_model(), params, chunk=0)
  with pytest.raises(run_config.ConfigError, match="group=-1 must be >= 0"):
    elastic.Predictor(_model(), params, group=-1)
  for devices in (9, -1):
    with pytest.raises(run_config.ConfigError) as raised:
      elastic.Predictor(_model(), params, devices=devices)
    assert str(raised.value) == (
        f"elastic devices={devices} must be 0 (every local device) or in "
        "[1, 8]"
    )


def test_the_script_times_a_random_init_image_model_and_refuses_others(
    capsys,
):
  from experiments import elastic_inference  # pylint: disable=g-import-not-at-top

  code = elastic_inference.main(
      [
          "--config=configs/digits/adatape.py:tiny",
          "--examples=8",
          "--batch=4",
          "--repeats=1",
          "--chunk=2",
          "--group=4",
          "--buckets=tuned",
          "--dtype=float32",
          "--max_tokens=3",  # Fewer tape lengths to compile and time.
      ]
  )
  out = capsys.readouterr().out.strip().splitlines()
  assert code == 0, out
  assert "random init" in out[1] and "8 examples in batches of 4" in out[1]
  assert "T=3," in out[1]
  for mode in ("padded ", "padded/chunk ", "padded+exit ", "elastic "):
    assert any(line.startswith(mode) for line in out), mode
  assert any(line.startswith("blocks after the tape") for line in out)
  assert any("ceiling for bucketing here" in line for line in out)
  last = out[-1].split()
  assert last[0] == "realized" and last[-2] == "theoretical", out[-1]
  # Not AdaTape, or not an image model: one line on stderr, exit 2.
  for config, message in (
      ("configs/digits/vit.py:tiny", "elastic inference needs AdaTape"),
      ("configs/parity/adatape.py:tiny", "need an image config"),
  ):
    assert elastic_inference.main([f"--config={config}"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


# A stand-in for a timing script, cheap to start: it reports its argv and
# the pass it was (from a counter file), ends with the script's last line,
# and fails the way a script does when told to.
_FAKE_TIMING = """
import pathlib, sys
args = sys.argv[1:]
if "--fail" in args:
  print("error: told to fail", file=sys.stderr)
  sys.exit(2)
counter = pathlib.Path(args[0])
index = len(counter.read_text()) if counter.exists() else 0
counter.write_text("x" * (index + 1))
print("# argv", " ".join(args))
saving = ["-5.6", "2.0", "-1.2"][index]
print("realized " + saving + "% of time saved, theoretical 11.2%")
"""


def test_processes_time_in_fresh_processes_and_report_the_median(
    tmp_path, monkeypatch, capsys
):
  from experiments import elastic_inference  # pylint: disable=g-import-not-at-top

  (tmp_path / "fake_timing.py").write_text(_FAKE_TIMING)
  monkeypatch.setenv("PYTHONPATH", str(tmp_path))
  counter, out = str(tmp_path / "counter"), tmp_path / "report.txt"
  code = elastic_inference.in_processes(
      "fake_timing", [counter, "--repeats=3"], 3, str(out)
  )
  assert code == 0
  lines = out.read_text().strip().splitlines()
  assert capsys.readouterr().out.strip().splitlines() == lines
  argv = f"# argv {counter} --repeats=3 --processes=1 --out="
  assert lines == [
      "## pass 1 of 3",
      argv,
      "realized -5.6% of time saved, theoretical 11.2%",
      "## pass 2 of 3",
      argv,
      "realized 2.0% of time saved, theoretical 11.2%",
      "## pass 3 of 3",
      argv,
      "realized -1.2% of time saved, theoretical 11.2%",
      "realized per process: -5.6 / 2.0 / -1.2%",
      "realized -1.2% of time saved, theoretical 11.2% (median of 3 "
      "processes)",
  ]
  # A failing process: its error and exit code, and no report written.
  failed = tmp_path / "failed.txt"
  code = elastic_inference.in_processes(
      "fake_timing", [counter, "--fail"], 2, str(failed)
  )
  assert code == 2 and not failed.exists()
  assert capsys.readouterr().err == "error: told to fail\n"


def test_scripts_refuse_fewer_than_one_process(tmp_path, capsys):
  from experiments import elastic_inference  # pylint: disable=g-import-not-at-top
  from experiments import halting_inference  # pylint: disable=g-import-not-at-top

  for main, source in (
      (elastic_inference.main, "--config=configs/digits/adatape.py:tiny"),
      (halting_inference.main, f"--workdir={tmp_path}"),
  ):
    assert main([source, "--processes=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --processes=0 must be >= 1", err


# A-ViT: each layer on the running tokens only (`HaltingPredictor`).


def _avit():
  c = ml_collections.ConfigDict()
  c.model = dict(
      name="avit",
      width=32,
      depth=4,
      num_heads=4,
      mlp_dim=64,
      stem="sequence",
      # Halting scores sigmoid(10 x0 + 5) of random states: tokens halt
      # after different layers, some after the first.
      gate_scale=10.0,
      gate_center=-5.0,
  )
  return models.build(c, input_shape=(16, 3), num_classes=4)


@pytest.fixture(scope="module")
def avit_setup():
  """A random-init A-ViT, 48 inputs, and their padded run."""
  model = _avit()
  rng = np.random.default_rng(1)
  x = np.asarray(jax.nn.one_hot(rng.integers(0, 3, (48, 16)), 3))
  params = jax.jit(lambda k, x: model.init(k, x, train=False))(
      jax.random.key(3), x[:1]
  )["params"]
  padded = _padded(model, params, x)
  depth = np.asarray(padded.token_depth_BxL)
  # The fixture is only a test of compaction if tokens halt unevenly.
  assert depth.min() == 1 and depth.max() > 1, np.unique(depth)
  return model, params, x, padded


@pytest.mark.parametrize("chunk, devices", [(1, 1), (8, 1), (48, 1), (2, 4)])
def test_compacted_a_vit_equals_the_padded_run_per_example(
    avit_setup, chunk, devices
):
  model, params, x, padded = avit_setup
  out = elastic.HaltingPredictor(
      model, params, (2, 4, 8, 12, 16), chunk, devices
  )(x)
  np.testing.assert_allclose(out.logits, padded.logits, atol=TOLERANCE)
  np.testing.assert_allclose(out.flops, padded.flops_B, rtol=1e-6)
  np.testing.assert_allclose(
      out.layers_used, padded.metrics_B["layers_used"], rtol=1e-6
  )
  # Each layer ran every example with room for its running tokens, and
  # some layers ran shorter than L = 16.
  running_BxD = (
      np.asarray(padded.token_depth_BxL)[:, None, :]
      > np.arange(4)[None, :, None]
  )
  assert np.all(out.budget >= running_BxD.sum(-1))
  assert np.any(out.budget < 16)


def test_compacted_a_vit_uniform_batch_and_batch_of_one(avit_setup):
  model, params, x, _ = avit_setup
  predictor = elastic.HaltingPredictor(model, params, chunk=4)
  same = np.repeat(x[:1], 5, axis=0)
  out = predictor(same)
  np.testing.assert_allclose(
      out.logits, _padded(model, params, same).logits, atol=TOLERANCE
  )
  assert np.all(out.budget == out.budget[:1])  # One schedule for all.
  one = predictor(x[1:2])
  np.testing.assert_allclose(
      one.logits, _padded(model, params, x[1:2]).logits, atol=TOLERANCE
  )


def test_compacted_block_runs_each_running_token_once():
  """A block that adds 1: running tokens get x + 1 at their positions,
  halted ones outside the chunk's budget 0; a chunk with no running token
  runs nothing."""
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(6, 8, 2)), jnp.float32)
  active = np.zeros((6, 8), np.float32)
  active[0, [1, 5]] = 1  # 2 running tokens, out of order with halted ones.
  active[1, :3] = 1
  active[2, [0, 2, 4, 6, 7]] = 1
  active[3, :] = 1  # Examples 4 and 5 have halted altogether.
  calls = []

  def run(x_CxKxD, mask_CxK):
    calls.append(x_CxKxD.shape)
    return x_CxKxD + 1.0

  y, budget = elastic.compacted_block(
      run, (2, 4, 8), x, jnp.asarray(active), chunk=2
  )
  y, budget = np.asarray(y), np.asarray(budget)
  on = active > 0
  np.testing.assert_allclose(y[on], np.asarray(x)[on] + 1.0)
  # Sorted by count (0, 0 | 2, 3 | 5, 8): budgets 0, 4 and 8.
  np.testing.assert_array_equal(budget, [4, 4, 8, 8, 0, 0])
  assert np.all(y[4:] == 0)
  # Outside each example's budget window, nothing was written.
  for b, k in enumerate(budget):
    order = np.argsort(~on[b], kind="stable")
    assert np.all(y[b, order[k:]] == 0)
  assert {s[1] for s in calls} <= {2, 4, 8}


def test_bad_budgets_and_models_are_refused(avit_setup, setup):
  model, params, _, _ = avit_setup
  with pytest.raises(run_config.ConfigError) as raised:
    elastic.HaltingPredictor(model, params, "4,8")
  assert str(raised.value).startswith(
      "--budgets=4,8 must be token counts in [1, 16] whose largest is L=16"
  )
  adatape_model, adatape_params, _ = setup
  with pytest.raises(run_config.ConfigError, match="needs an A-ViT model"):
    elastic.HaltingPredictor(adatape_model, adatape_params)


def test_halting_script_refuses_a_missing_run(tmp_path, capsys):
  from experiments import halting_inference  # pylint: disable=g-import-not-at-top

  missing = str(tmp_path / "no_run")
  assert halting_inference.main([f"--workdir={missing}"]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and missing in err, err
  assert len(err.splitlines()) == 1
