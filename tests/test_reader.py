"""Adaptive tape reading: bounds, a hand-checked step, and the fixes of the
official flat gather, padded slots, ungraded fixed reader and re-reads."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adatape import layers
from adatape import run_config
from adatape import tape
from adatape.tape import reader

CFG = tape.TapeConfig(num_tokens=10, epsilon=2.0, key_split=1)


def _random(batch=6, bank=60, width=8, seed=0, shared=False):
  rng = np.random.default_rng(seed)
  query = rng.normal(size=(batch, width)).astype(np.float32)
  shape = (bank, width) if shared else (batch, bank, width)
  return query, rng.normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("shared", [False, True])
def test_shapes_and_length_bounds(shared):
  query, bank = _random(batch=32, shared=shared)
  out = tape.read_tape(query, bank, CFG)
  assert out.tokens_BxTxD.shape == (32, 10, 8)
  assert out.mask_BxT.shape == (32, 10)
  length = np.asarray(out.length_B)
  # epsilon = 2 bounds the length below by 2; K = 5 bounds it above by T.
  assert length.min() >= 2 and length.max() <= 10
  np.testing.assert_array_equal(np.asarray(out.mask_BxT).sum(1), length)
  # Slots past the length are exactly zero.
  padded = np.asarray(out.tokens_BxTxD)[~np.asarray(out.mask_BxT)]
  assert np.all(padded == 0)


def test_one_step_by_hand():
  """Two steps on a 4-entry bank, checked against scalar arithmetic."""
  cfg = tape.TapeConfig(num_tokens=2, epsilon=1.0, key_split=1)
  bank = np.array([[2.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], np.float32)
  query = np.array([[1.0, 0.0]], np.float32)
  out = tape.read_tape(query, bank, cfg)

  def softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()

  # Step 1: scores (2, 1, 0, -1); K = 2 picks entries 0 and 1.
  w1 = softmax(np.array([2.0, 1.0]) / np.sqrt(2))
  token1 = w1[0] * bank[0] + w1[1] * bank[1]
  h1 = w1[0]
  assert h1 < 1.0  # Keeps reading.
  q2 = 0.5 * (query[0] + token1)
  # Step 2: entries 0 and 1 are used; 2 and 3 remain, in that order.
  s2 = bank @ q2
  w2 = softmax(np.array([s2[2], s2[3]]) / np.sqrt(2))
  token2 = w2[0] * bank[2] + w2[1] * bank[3]
  assert h1 + w2[0] >= 1.0  # Halts at step 2.
  loss = (1 - np.sum(w1**2)) + (1 - np.sum(w2**2))

  np.testing.assert_array_equal(out.indices_BxSxK[0], [[0, 1], [2, 3]])
  np.testing.assert_allclose(out.weights_BxSxK[0], [w1, w2], rtol=1e-6)
  np.testing.assert_allclose(
      out.tokens_BxTxD[0], [token1, token2], rtol=1e-6, atol=1e-7
  )
  np.testing.assert_allclose(out.loss_B[0], loss, rtol=1e-6)
  assert int(out.length_B[0]) == 2


def test_max_loss_and_simple_query():
  cfg = tape.TapeConfig(
      num_tokens=2,
      epsilon=1.0,
      key_split=1,
      loss_type="max",
      complex_query=False,
  )
  bank = np.array([[2.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], np.float32)
  out = tape.read_tape(np.array([[1.0, 0.0]], np.float32), bank, cfg)
  w = np.asarray(out.weights_BxSxK[0])
  expected = (1 - w[0].max()) + (1 - w[1].max()) * (w[0, 0] < 1.0)
  np.testing.assert_allclose(out.loss_B[0], expected, rtol=1e-6)
  # Simple query: step 2 scores with the read key alone, (w0*2 + w1*1, 0).
  q2 = w[0, 0] * bank[0] + w[0, 1] * bank[1]
  s = bank[[2, 3]] @ q2
  e = np.exp(s / np.sqrt(2) - (s / np.sqrt(2)).max())
  np.testing.assert_allclose(w[1], e / e.sum(), rtol=1e-6)


def test_batch_independence_and_legacy_gather_breaks_it():
  query, bank = _random(batch=8)
  batched = tape.read_tape(query, bank, CFG)
  for b in range(8):
    alone = tape.read_tape(query[b : b + 1], bank[b : b + 1], CFG)
    assert int(alone.length_B[0]) == int(batched.length_B[b])
    np.testing.assert_allclose(
        alone.tokens_BxTxD[0], batched.tokens_BxTxD[b], rtol=1e-5, atol=1e-6
    )
  # The official flat gather reads example 0's scores for everyone.
  legacy = dataclasses.replace(CFG, legacy_flat_gather=True)
  batched = tape.read_tape(query, bank, legacy)
  differs = [
      not np.allclose(
          tape.read_tape(
              query[b : b + 1], bank[b : b + 1], legacy
          ).weights_BxSxK[0],
          batched.weights_BxSxK[b],
      )
      for b in range(1, 8)
  ]
  assert any(differs)


def _loss_grad(cfg, query, bank):
  def f(bank):
    return tape.read_tape(query, bank, cfg).loss_B.sum()

  return np.asarray(jax.grad(f)(bank))


def test_atr_loss_gradient_reaches_every_example():
  query, bank = _random(batch=6)
  grad = _loss_grad(CFG, query, bank)
  per_example = np.abs(grad).reshape(6, -1).sum(1)
  assert np.all(per_example > 0), per_example
  # The official flat gather zeroes the gradient of examples 1..B-1.
  legacy = _loss_grad(
      dataclasses.replace(CFG, legacy_flat_gather=True), query, bank
  )
  assert np.abs(legacy[1:]).sum() == 0 and np.abs(legacy[0]).sum() > 0


def test_early_stop_skip_is_identical():
  # Peaked scores: every example halts after ceil(epsilon) = 2 of 10 steps,
  # so 8 steps are skipped.
  query, bank = _random(batch=4)
  query = query * 50
  plain = tape.read_tape(query, bank, CFG)
  assert int(plain.length_B.max()) < 10
  skipped = tape.read_tape(
      query, bank, dataclasses.replace(CFG, early_stop=True)
  )
  for a, b in zip(plain[:4], skipped[:4]):
    np.testing.assert_array_equal(a, b)

  def grad(c):
    return jax.grad(lambda q: tape.read_tape(q, bank, c).tokens_BxTxD.sum())(
        query
    )

  np.testing.assert_array_equal(
      grad(CFG), grad(dataclasses.replace(CFG, early_stop=True))
  )


@pytest.mark.parametrize("unroll", [3, 10, 64])
def test_unrolled_scan_reads_the_same_tape(unroll):
  # Mixed lengths, so that halted and running examples share the loop, and
  # an unroll that does not divide the 10 steps (3) or exceeds them (64).
  query, bank = _random(batch=16)
  cfg = dataclasses.replace(CFG, scan_unroll=unroll)
  plain = jax.jit(lambda q, b: tape.read_tape(q, b, CFG))(query, bank)
  unrolled = jax.jit(lambda q, b: tape.read_tape(q, b, cfg))(query, bank)
  assert len(set(np.asarray(plain.length_B).tolist())) > 1
  for name in ("mask_BxT", "length_B", "indices_BxSxK"):
    np.testing.assert_array_equal(
        getattr(plain, name), getattr(unrolled, name), err_msg=name
    )
  for name in ("tokens_BxTxD", "loss_B", "weights_BxSxK"):
    np.testing.assert_allclose(
        getattr(plain, name), getattr(unrolled, name), rtol=1e-5, atol=1e-6
    )

  def grads(c):
    def loss(q, b):
      out = tape.read_tape(q, b, c)
      return (out.tokens_BxTxD**2).sum() + out.loss_B.sum()

    return jax.jit(jax.grad(loss, argnums=(0, 1)))(query, bank)

  for a, b in zip(grads(CFG), grads(cfg)):
    assert np.abs(np.asarray(a)).sum() > 0
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_scan_unroll_below_one_is_rejected():
  with pytest.raises(run_config.ConfigError, match="tape.scan_unroll=0"):
    tape.TapeConfig(num_tokens=10, epsilon=2.0, scan_unroll=0)


def test_fixed_selection_is_hard_top_t_with_gradient():
  cfg = dataclasses.replace(CFG, adaptive=False)
  query, bank = _random(batch=3, shared=True)
  out = tape.read_tape(query, bank, cfg)
  top = np.argsort(-(query @ bank.T), axis=1)[:, :10]
  np.testing.assert_allclose(out.tokens_BxTxD, bank[top], rtol=1e-6)
  assert np.all(np.asarray(out.length_B) == 10)
  # Unlike the official fallback (hard top-T), the selection gets a
  # gradient.
  grad = jax.grad(
      lambda q: (tape.read_tape(q, bank, cfg).tokens_BxTxD * np.arange(8)).sum()
  )(query)
  assert np.all(np.abs(np.asarray(grad)).sum(1) > 0)


def test_tokens_per_step_emits_groups():
  cfg = tape.TapeConfig(
      num_tokens=8, tokens_per_step=2, epsilon=2.0, key_split=1
  )
  query, bank = _random(batch=5, bank=32)
  out = tape.read_tape(query, bank, cfg)
  assert out.tokens_BxTxD.shape == (5, 8, 8)
  assert np.all(np.asarray(out.length_B) % 2 == 0)
  # Each token is a convex combination of its group: ranks (0, 2), (1, 3).
  w = np.asarray(out.weights_BxSxK[0, 0])
  idx = np.asarray(out.indices_BxSxK[0, 0])
  first = (w[0] * bank[0, idx[0]] + w[2] * bank[0, idx[2]]) / (w[0] + w[2])
  np.testing.assert_allclose(out.tokens_BxTxD[0, 0], first, rtol=1e-5)


def test_entries_are_never_reread():
  cfg = tape.TapeConfig(num_tokens=8, epsilon=2.0, key_split=1)
  query, bank = _random(batch=4, bank=32)
  out = tape.read_tape(query, bank, cfg)
  for b in range(4):
    idx = np.asarray(out.indices_BxSxK[b]).ravel()
    assert len(set(idx.tolist())) == idx.size


def test_bank_dropout_hides_entries():
  cfg = tape.TapeConfig(num_tokens=4, epsilon=2.0, key_split=1)
  query, bank = _random(batch=2, bank=16)
  dropped = np.zeros((2, 16), bool)
  dropped[:, :8] = True
  out = tape.read_tape(query, bank, cfg, jnp.asarray(dropped))
  assert np.all(np.asarray(out.indices_BxSxK) >= 8)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(epsilon=9.0, num_tokens=8), "tape.epsilon"),
        (dict(num_tokens=0), "tape.num_tokens"),
        (dict(num_tokens=8, tokens_per_step=3), "tape.num_tokens"),
        (dict(loss_type="shannon"), "tape.loss_type"),
        (dict(bank="learn", bank_size=0), "tape.bank_size"),
        (dict(bank_dropout=1.0), "tape.bank_dropout"),
    ],
)
def test_bad_tape_configs_are_rejected(kwargs, key):
  with pytest.raises(run_config.ConfigError, match=key):
    tape.TapeConfig(**kwargs)


def test_bank_too_small_is_rejected():
  cfg = tape.TapeConfig(num_tokens=16, epsilon=2.0)
  with pytest.raises(run_config.ConfigError, match="consumes up to 128"):
    cfg.check_bank(16, 64, "test bank")


@pytest.mark.parametrize("tokens_per_step", [1, 2])
def test_early_exit_reads_the_same_tape(tokens_per_step):
  """The inference loop stops once every example has halted; its tape is
  the full scan's, and it stops at the longest tape of the batch."""
  cfg = tape.TapeConfig(
      num_tokens=8, tokens_per_step=tokens_per_step, epsilon=2.0, key_split=1
  )
  rng = np.random.default_rng(3)
  query = jnp.asarray(rng.normal(size=(6, 16)), jnp.float32)
  bank = jnp.asarray(rng.normal(size=(6, 40, 16)) * 6, jnp.float32)
  full = jax.jit(lambda q, b: tape.read_tape(q, b, cfg))(query, bank)
  early = jax.jit(lambda q, b: tape.read_tape(q, b, cfg, exit_early=True))(
      query, bank
  )
  for name in ("tokens_BxTxD", "mask_BxT", "length_B"):
    np.testing.assert_array_equal(getattr(early, name), getattr(full, name))
  # The loss sums the same terms; XLA may order the sum differently.
  np.testing.assert_allclose(early.loss_B, full.loss_B, rtol=1e-6)
  steps_run = int(full.length_B.max()) // tokens_per_step
  assert steps_run < cfg.num_steps  # Some steps were skipped...
  np.testing.assert_array_equal(
      early.indices_BxSxK[:, :steps_run], full.indices_BxSxK[:, :steps_run]
  )
  # ...and reported as such.
  assert np.all(np.asarray(early.weights_BxSxK[:, steps_run:]) == 0)


@pytest.mark.parametrize("entries", [8, 32])
def test_rank_top_k_is_lax_top_k(entries):
  """Small banks select by rank: the same values, indices (ties to the
  lower index, -inf entries last) and gradients as `lax.top_k`."""
  rng = np.random.default_rng(5)
  scores = np.round(rng.normal(size=(16, entries)), 1).astype(np.float32)
  scores[:, ::5] = -np.inf  # Entries already read.
  scores[0] = 0.5  # A row of ties.
  scores = jnp.asarray(scores)
  assert entries <= reader.rank_top_k_limit()
  values, index = reader.top_k(scores, 4)
  want_values, want_index = jax.lax.top_k(scores, 4)
  np.testing.assert_array_equal(index, want_index)
  np.testing.assert_array_equal(values, want_values)
  weights = jnp.arange(1.0, 5.0)
  grad = jax.grad(lambda s: (reader.top_k(s, 4)[0] * weights).sum())
  want = jax.grad(lambda s: (jax.lax.top_k(s, 4)[0] * weights).sum())
  np.testing.assert_array_equal(grad(scores), want(scores))


@pytest.mark.parametrize(
    "platform, entries, sorts",
    [("cpu", 32, False), ("cpu", 33, True), ("gpu", 16, True)],
)
def test_top_k_sorts_where_rank_did_not_win(
    monkeypatch, platform, entries, sorts
):
  """Rank selection is taken on CPU up to its measured limit; past it, and
  on a GPU (where `lax.top_k` was the faster at 16 and 32 entries), the
  sort."""
  monkeypatch.setattr(layers, "platform", lambda: platform)
  jaxpr = jax.make_jaxpr(lambda s: reader.top_k(s, 4))(jnp.zeros((2, entries)))
  assert ("top_k" in str(jaxpr)) == sorts


def test_reading_a_small_bank_by_rank_equals_the_sorting_top_k(monkeypatch):
  """A whole read of a 32-entry bank (with bank dropout) and its gradients
  are the same whichever top-k selects the candidates."""
  cfg = tape.TapeConfig(num_tokens=8, epsilon=2.0, key_split=4)
  query, bank = _random(batch=6, bank=32, width=16, seed=7)
  dropped = np.random.default_rng(8).random((6, 32)) < 0.2

  def read(q, b):
    out = tape.read_tape(q, b, cfg, jnp.asarray(dropped))
    return out, (out.tokens_BxTxD.sum(-1) * jnp.arange(8)).sum() + (
        out.loss_B.sum()
    )

  def run():
    out, _ = jax.jit(read)(query, bank)
    grads = jax.jit(jax.grad(lambda q, b: read(q, b)[1], (0, 1)))(query, bank)
    return out, grads

  by_rank, rank_grads = run()
  monkeypatch.setattr(reader, "RANK_TOP_K_MAX_ENTRIES", {})
  by_sort, sort_grads = run()
  for name in ("indices_BxSxK", "mask_BxT", "length_B"):
    np.testing.assert_array_equal(
        getattr(by_rank, name), getattr(by_sort, name)
    )
  for name in ("tokens_BxTxD", "weights_BxSxK", "loss_B"):
    np.testing.assert_allclose(
        getattr(by_rank, name), getattr(by_sort, name), atol=1e-6
    )
  for got, want in zip(rank_grads, sort_grads):
    np.testing.assert_allclose(got, want, atol=1e-5)
