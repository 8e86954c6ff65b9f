"""Pointer-value retrieval: labels for every hop count, streams, eval."""

import numpy as np
import pytest

from adatape import run_config
from adatape.data import pvr


def _brute_force(values, hops):
  position = 0
  for _ in range(hops):
    position = values[position]
  return values[position]


@pytest.mark.parametrize("hops", [1, 2, 3, 5, 8])
def test_labels_follow_every_hop_count_and_never_a_shorter_chase(hops):
  config = pvr.Config(seq_len=12, train_hops=hops, eval_hops=8)
  batch = pvr.sample(np.random.default_rng(hops), 300, config, hops)
  values = batch["inputs"][:, :12].argmax(-1)
  np.testing.assert_array_equal(values, batch["values"])
  assert batch["hops"].min() >= 1 and batch["hops"].max() <= hops
  for row, h, label in zip(values, batch["hops"], batch["label"]):
    assert label == _brute_force(row, h)
    # No cycle: the h-hop label differs from every shorter chase's answer.
    for shorter in range(1, h):
      assert label != _brute_force(row, shorter)


def test_hop_count_is_that_many_marker_tokens():
  config = pvr.Config(seq_len=10, train_hops=2, eval_hops=5)
  batch = pvr.sample(np.random.default_rng(0), 200, config, 5)
  markers = batch["inputs"][:, 10:].argmax(-1)  # After the 10 values.
  assert markers.shape == (200, 5)
  hop, blank = 10, 11
  for row, h in zip(markers, batch["hops"]):
    np.testing.assert_array_equal(row[:h], hop)
    np.testing.assert_array_equal(row[h:], blank)
  # Counts beyond training (3..5) use the same two marker symbols.
  assert set(np.unique(markers)) == {hop, blank}
  assert batch["hops"].max() == 5


def test_hand_case():
  values = np.array([[2, 0, 3, 1]])
  # 0 -> x[0]=2 -> x[2]=3 -> x[3]=1; labels for h = 1, 2, 3 read there.
  for h, expected in ((1, 3), (2, 1), (3, 0)):
    assert pvr.follow(values, np.array([h]))[0] == expected


def test_eval_has_more_hops_than_training_and_streams_are_deterministic():
  config = pvr.Config(seq_len=10, train_hops=2, eval_hops=5, eval_examples=500)
  source = pvr.Source(config, seed=0, process_index=0, process_count=1)
  assert source.input_shape == (15, 12) and source.num_classes == 10
  assert source.eval_set()["hops"].max() == 5
  a, b = source.train_batch(4, 8), source.train_batch(4, 8)
  np.testing.assert_array_equal(a["inputs"], b["inputs"])
  assert not np.array_equal(a["inputs"], source.train_batch(5, 8)["inputs"])
  markers = source.train_batch(0, 256)["inputs"][:, 10:].argmax(-1)
  assert (markers == 10).sum(1).max() == 2  # HOP markers: train_hops.
  halves = [
      pvr.Source(config, seed=0, process_index=p, process_count=2).train_batch(
          4, 4
      )["inputs"]
      for p in (0, 1)
  ]
  np.testing.assert_array_equal(np.concatenate(halves), a["inputs"])
  counted = sum(int(batch["mask"].sum()) for batch in source.eval_batches(64))
  assert counted == 500


def test_bad_pvr_config_is_rejected():
  with pytest.raises(run_config.ConfigError, match="data.eval_hops"):
    pvr.Config(train_hops=4, eval_hops=2)
  with pytest.raises(run_config.ConfigError, match="data.seq_len"):
    pvr.Config(seq_len=8, train_hops=3, eval_hops=7)
