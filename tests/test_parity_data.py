"""Parity data: labels, determinism, per-process streams, exact eval."""

import numpy as np
import pytest

from adatape.data import parity


def _source(process_index=0, process_count=1, seed=0, **kwargs):
  config = parity.Config(**kwargs)
  return parity.Source(
      config,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
  )


@pytest.mark.parametrize("variant", parity.VARIANTS)
def test_labels_are_parity_of_plus_ones(variant):
  rng = np.random.default_rng(0)
  batch = parity.sample(rng, 500, 17, variant)
  values = batch["values"]
  np.testing.assert_array_equal(batch["label"], (values == 1).sum(1) % 2)
  # One-hot: index 0 <-> -1, 1 <-> 0, 2 <-> +1.
  np.testing.assert_array_equal(batch["inputs"].argmax(-1), values + 1)
  np.testing.assert_array_equal(batch["inputs"].sum(-1), 1.0)
  assert set(np.unique(values)) <= {-1, 0, 1}


def test_graves_variant_has_between_one_and_all_nonzeros():
  batch = parity.sample(np.random.default_rng(1), 2000, 16, "graves")
  nonzero = (batch["values"] != 0).sum(1)
  assert nonzero.min() >= 1 and nonzero.max() == 16
  # Roughly uniform in [1, 16]: both halves well represented.
  assert 0.35 < np.mean(nonzero <= 8) < 0.65


def test_uniform_variant_is_balanced():
  values = parity.sample(np.random.default_rng(2), 4000, 32, "uniform")[
      "values"
  ]
  counts = [np.mean(values == v) for v in (-1, 0, 1)]
  np.testing.assert_allclose(counts, 1 / 3, atol=0.01)


def test_process_slices_tile_the_single_process_batch():
  whole = _source().train_batch(3, 32)["inputs"]
  halves = [_source(p, 2).train_batch(3, 16)["inputs"] for p in (0, 1)]
  np.testing.assert_array_equal(np.concatenate(halves), whole)


def test_batches_are_reproducible_and_streams_differ():
  a = _source().train_batch(7, 32)
  b = _source().train_batch(7, 32)
  np.testing.assert_array_equal(a["inputs"], b["inputs"])
  different = [
      _source().train_batch(8, 32),  # another step
      _source(process_index=1, process_count=2).train_batch(7, 32),
      _source(seed=1).train_batch(7, 32),  # another seed
  ]
  for other in different:
    assert not np.array_equal(a["inputs"], other["inputs"])


def test_eval_set_is_fixed_and_not_a_train_batch():
  source = _source(eval_examples=64)
  first = np.concatenate([b["inputs"] for b in source.eval_batches(32)])
  again = np.concatenate([b["inputs"] for b in source.eval_batches(32)])
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first[:32], source.train_batch(0, 32)["inputs"])


def test_eval_counts_every_example_once_across_processes():
  # 50 examples, 2 processes, local batch 8: 4 global batches of 16, the
  # last one partly padding.
  total = 50
  seen = []
  batches = []
  for process in range(2):
    source = _source(process, 2, eval_examples=total)
    full = source.eval_set()["inputs"]
    mine = list(source.eval_batches(8))
    batches.append(len(mine))
    for batch in mine:
      for row, valid in zip(batch["inputs"], batch["mask"]):
        if valid:
          seen.append(int(np.where((full == row).all(axis=(1, 2)))[0][0]))
  assert batches[0] == batches[1] == 4
  assert sorted(seen) == list(range(total))


def test_bad_data_config_is_rejected():
  from adatape import run_config  # pylint: disable=g-import-not-at-top

  with pytest.raises(run_config.ConfigError, match="data.seq_len"):
    parity.Config(seq_len=-3)
  with pytest.raises(run_config.ConfigError, match="data.variant"):
    parity.Config(variant="binary")
