"""Adaptive tape reading (ATR) as one pure, static-shape function.

`read_tape` takes an already-normalised query and bank and returns a typed
`TapeReadout`. There are no parameters inside, so it runs the same way in
`init` and `apply`, under `jit`, `grad` and any sharding (the official code
needed an init-mode special case for its `nn.cond`).

One reading step (the official `layers.py`, with its bugs fixed):
  scores a = q . keys^T over the bank; entries already read are excluded
  with -inf (officially -1e9, so they could be re-read); the top K = floor(T / epsilon) are taken *per example*
  (the official flat gather made every example use example 0's scores),
  weighted by softmax(a_top / sqrt(d_k)) and merged into tape token(s); the
  halting sum grows by the top-p weights until it reaches epsilon.

Shapes: B batch, M bank entries, D width, Dk key width, T tape tokens,
S = T / p reading steps, K candidates per step, p tokens per step.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adatape import layers
from adatape.tape import config as tape_config

# Bank entries hidden by bank dropout get this penalty instead of -inf, so a
# heavily dropped bank degrades to reading hidden entries at ~zero weight
# instead of producing NaNs.
_DROPPED_PENALTY = 1e9

# Banks of up to this many entries pick their top-K by rank (`top_k`), per
# platform (`layers.platform`); elsewhere `lax.top_k`. At these sizes rank
# won only on CPU: a whole read of a 16-entry bank took 0.50 ms by rank
# against 0.34 ms by `lax.top_k` on the H200, and 0.55 against 0.46 ms at
# 32 entries (experiments/results/reader_ops_nvidia_h200.txt).
RANK_TOP_K_MAX_ENTRIES = {"cpu": 32}


def rank_top_k_limit() -> int:
  """The most bank entries `top_k` picks by rank on this platform."""
  return RANK_TOP_K_MAX_ENTRIES.get(layers.platform(), 0)


class TapeReadout(NamedTuple):
  """What one tape read returns.

  Attributes:
    tokens_BxTxD: tape tokens; slots past the example's length are zeros.
    mask_BxT: True for the slots that belong to the example's tape: the
      first `length_B` (the encoder relies on it, `keys_are_prefix`).
    length_B: number of valid tape tokens (int32).
    loss_B: the ATR loss, summed over the steps the example was running.
    indices_BxSxK: bank entries considered at each step (for heatmaps).
    weights_BxSxK: their mixing weights.
  """

  tokens_BxTxD: jax.Array
  mask_BxT: jax.Array
  length_B: jax.Array
  loss_B: jax.Array
  indices_BxSxK: jax.Array
  weights_BxSxK: jax.Array


class _Carry(NamedTuple):
  query_BxDk: jax.Array
  halting_B: jax.Array  # Running sum of increments (not clamped).
  used_BxM: jax.Array


def _scores(query_BxDk: jax.Array, keys: jax.Array) -> jax.Array:
  """Query-key dot products; keys are [M, Dk] (shared) or [B, M, Dk]."""
  if keys.ndim == 2:
    return query_BxDk @ keys.T
  return jnp.einsum("bd,bmd->bm", query_BxDk, keys)


def _gather_rows(bank: jax.Array, indices_BxK: jax.Array) -> jax.Array:
  """bank[b, indices[b, k]] for a [B, M, D] bank, bank[indices] for [M, D]."""
  if bank.ndim == 2:
    return bank[indices_BxK]
  return jnp.take_along_axis(bank, indices_BxK[..., None], axis=1)


def top_k(scores_BxM: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """`lax.top_k` (values descending, ties to the lower index) of each row.

  For a small bank it selects by rank instead: an entry's rank is how many
  entries beat it (a larger score, or an equal one at a lower index), and
  the entries of ranks 0..k-1 are the top k in order. That is M^2 compares
  per example, all in one fused op, where XLA's CPU top-k is a sort
  (a library call) in each reading step; past `RANK_TOP_K_MAX_ENTRIES`
  entries, or on a platform where it did not win, the sort is the cheaper
  (`experiments/reader_ops.py`). Same values, indices and gradients (into
  the selected scores) as `lax.top_k`.
  """
  entries = scores_BxM.shape[-1]
  if entries > rank_top_k_limit():
    return jax.lax.top_k(scores_BxM, k)
  position_M = jnp.arange(entries)
  a_BxMx1 = scores_BxM[:, :, None]
  b_Bx1xM = scores_BxM[:, None, :]
  beats_BxMxM = (b_Bx1xM > a_BxMx1) | (
      (b_Bx1xM == a_BxMx1) & (position_M[None, None, :] < position_M[:, None])
  )
  rank_BxM = jnp.sum(beats_BxMxM, axis=-1, dtype=jnp.int32)
  is_rank_BxKxM = rank_BxM[:, None, :] == jnp.arange(k)[None, :, None]
  index_BxK = jnp.sum(
      jnp.where(is_rank_BxKxM, position_M, 0), axis=-1, dtype=jnp.int32
  )
  return jnp.take_along_axis(scores_BxM, index_BxK, axis=1), index_BxK


def _group_matrix(num_candidates: int, tokens_per_step: int) -> np.ndarray:
  """[p, K] 0/1 matrix dealing candidates round-robin into p groups.

  Group g holds ranks g, g + p, g + 2p, ...: the top-p candidates, whose
  weights form the halting increment, each lead one emitted token.
  """
  ranks = np.arange(num_candidates)
  groups = np.arange(tokens_per_step)[:, None]
  return (ranks[None, :] % tokens_per_step == groups).astype(np.float32)


def _merge(
    weights_BxK: jax.Array, cand_BxKxD: jax.Array, tokens_per_step: int
) -> jax.Array:
  """Weighted merge of the K candidates into p tokens, [B, p, D].

  With p = 1 this is the official merge sum_j w_j v_j. With p > 1 (which
  crashes in the official code) each group is a convex combination of its
  candidates, so every emitted token has the scale of a bank entry.
  """
  if tokens_per_step == 1:
    return jnp.einsum("bk,bkd->bd", weights_BxK, cand_BxKxD)[:, None, :]
  groups_PxK = jnp.asarray(
      _group_matrix(weights_BxK.shape[-1], tokens_per_step)
  )
  grouped_BxPxK = groups_PxK[None] * weights_BxK[:, None, :]
  # A step never run has zero weights: its tokens are zero, not 0 / 0.
  total_BxPx1 = grouped_BxPxK.sum(-1, keepdims=True)
  grouped_BxPxK = grouped_BxPxK / jnp.where(total_BxPx1 > 0, total_BxPx1, 1.0)
  return jnp.einsum("bpk,bkd->bpd", grouped_BxPxK, cand_BxKxD)


def read_tape(
    query_BxD: jax.Array,
    bank: jax.Array,
    config: tape_config.TapeConfig,
    dropped_BxM: jax.Array | None = None,
    exit_early: bool = False,
) -> TapeReadout:
  """Reads a tape of up to T tokens from `bank` for each example.

  Args:
    query_BxD: the normalised query (LayerNorm of the pooled stream).
    bank: the normalised bank, [M, D] (shared) or [B, M, D] (per example).
      Its first D / key_split channels are the keys; values are the whole
      vectors.
    config: tape settings.
    dropped_BxM: optional bank-dropout mask (True: hidden from the example).
    exit_early: stop reading as soon as every example has halted (a
      `while_loop`; inference: it has no reverse-mode gradient). Tokens,
      masks, lengths and losses equal the full scan's; the candidates of
      the steps never run are reported as index 0 with weight 0.

  Returns:
    A TapeReadout. Computation is in float32 whatever the input dtype, since
    the halting sums compare against a threshold.
  """
  query_BxD = jnp.asarray(query_BxD, jnp.float32)
  bank = jnp.asarray(bank, jnp.float32)
  batch, width = query_BxD.shape
  key_dim = width // config.key_split
  keys = bank[..., :key_dim]
  if not config.adaptive:
    return _read_fixed(query_BxD[:, :key_dim], keys, bank, config, dropped_BxM)

  num_bank = bank.shape[-2]
  num_cand = config.num_candidates
  p = config.tokens_per_step
  eps = jnp.float32(config.epsilon)
  scale = 1.0 / np.sqrt(key_dim)

  def step(carry: _Carry, _):
    scores_BxM = _scores(carry.query_BxDk, keys)
    masked_BxM = jnp.where(carry.used_BxM, -jnp.inf, scores_BxM)
    if dropped_BxM is not None:
      masked_BxM = jnp.where(
          dropped_BxM & ~carry.used_BxM,
          masked_BxM - _DROPPED_PENALTY,
          masked_BxM,
      )
    top_BxK, index_BxK = top_k(masked_BxM, num_cand)
    if config.legacy_flat_gather:
      # Official behaviour: a gather on the flattened [B*M] scores with
      # indices < M, i.e. every example reads row 0.
      top_BxK = jnp.take(scores_BxM.reshape(-1), index_BxK)
    weight_BxK = jax.nn.softmax(top_BxK * scale, axis=-1)
    # Only the keys feed the next step; the values are merged after the
    # loop, for all steps at once.
    read_key_BxDk = jnp.einsum(
        "bk,bkd->bd", weight_BxK, _gather_rows(keys, index_BxK)
    )
    if config.complex_query:
      query_BxDk = 0.5 * (carry.query_BxDk + read_key_BxDk)
    else:
      query_BxDk = read_key_BxDk
    used_BxM = carry.used_BxM.at[jnp.arange(batch)[:, None], index_BxK].set(
        True
    )
    increment_B = jnp.sum(weight_BxK[:, :p], axis=-1)
    new_carry = _Carry(query_BxDk, carry.halting_B + increment_B, used_BxM)
    return new_carry, (index_BxK, weight_BxK, carry.halting_B)

  def skip(carry: _Carry, _):
    zeros = (
        jnp.zeros((batch, num_cand), jnp.int32),
        jnp.zeros((batch, num_cand), jnp.float32),
        carry.halting_B,
    )
    return carry, zeros

  def maybe_step(carry: _Carry, x):
    done = jnp.all(carry.halting_B >= eps)
    return jax.lax.cond(done, skip, step, carry, x)

  init = _Carry(
      query_BxDk=query_BxD[:, :key_dim],
      halting_B=jnp.zeros((batch,), jnp.float32),
      used_BxM=jnp.zeros((batch, num_bank), bool),
  )
  if exit_early:
    index_SxBxK, weight_SxBxK, before_SxB = _read_while(
        step, init, eps, config.num_steps, batch, num_cand
    )
  else:
    body = maybe_step if config.early_stop else step
    _, (index_SxBxK, weight_SxBxK, before_SxB) = jax.lax.scan(
        body,
        init,
        None,
        length=config.num_steps,
        unroll=min(config.scan_unroll, config.num_steps),
    )

  # Halting bookkeeping, vectorised over steps (fewer ops inside the loop).
  # An example runs at step t while its halting sum before t is below
  # epsilon; the step that crosses epsilon is its last.
  # `before_SxB` are the loop's own sequential sums, so the decisions are
  # bit-identical to a step-by-step implementation.
  running_SxB = before_SxB < eps
  if config.loss_type == "entropy":
    step_loss_SxB = 1.0 - jnp.sum(weight_SxBxK**2, axis=-1)
  else:
    step_loss_SxB = 1.0 - jnp.max(weight_SxBxK, axis=-1)
  loss_B = jnp.sum(step_loss_SxB * running_SxB, axis=0)
  steps_B = jnp.sum(running_SxB, axis=0, dtype=jnp.int32)

  # Every step's p tokens, merged from its K candidates' values at once.
  index_BxSxK = jnp.moveaxis(index_SxBxK, 0, 1)
  weight_BxSxK = jnp.moveaxis(weight_SxBxK, 0, 1)
  steps = config.num_steps
  cand_BSxKxD = _gather_rows(bank, index_BxSxK.reshape(batch, -1)).reshape(
      batch * steps, num_cand, width
  )
  tokens_BxTxD = _merge(
      weight_BxSxK.reshape(batch * steps, num_cand), cand_BSxKxD, p
  ).reshape(batch, config.num_tokens, width)
  length_B = steps_B * p
  mask_BxT = jnp.arange(config.num_tokens)[None, :] < length_B[:, None]
  # Zero the slots past each example's length (officially left as they
  # were, so pooled features depended on the batch): what a halted
  # example's later steps computed must not depend on the rest of the batch.
  tokens_BxTxD = jnp.where(mask_BxT[..., None], tokens_BxTxD, 0.0)
  return TapeReadout(
      tokens_BxTxD=tokens_BxTxD,
      mask_BxT=mask_BxT,
      length_B=length_B,
      loss_B=loss_B,
      indices_BxSxK=index_BxSxK,
      weights_BxSxK=weight_BxSxK,
  )


def _read_while(step, init: _Carry, eps, num_steps: int, batch, num_cand):
  """`step` while some example is still reading, into [S, ...] buffers.

  The halting sum of a step never run is +inf: no example runs there.
  """
  buffers = (
      jnp.zeros((num_steps, batch, num_cand), jnp.int32),
      jnp.zeros((num_steps, batch, num_cand), jnp.float32),
      jnp.full((num_steps, batch), jnp.inf, jnp.float32),
  )

  def running(state):
    t, carry, _ = state
    return (t < num_steps) & jnp.any(carry.halting_B < eps)

  def body(state):
    t, carry, outs = state
    carry, new = step(carry, None)
    outs = tuple(o.at[t].set(v) for o, v in zip(outs, new))
    return t + 1, carry, outs

  _, _, outs = jax.lax.while_loop(running, body, (0, init, buffers))
  return outs


def _read_fixed(
    query_BxDk: jax.Array,
    keys: jax.Array,
    bank: jax.Array,
    config: tape_config.TapeConfig,
    dropped_BxM: jax.Array | None,
) -> TapeReadout:
  """Non-adaptive reading: the top-T bank entries by score, every time.

  The forward value is exactly the selected (normalised) bank entries, as in
  the official fallback. Unlike it (a hard top-T, so the selection got no
  gradient), the selection gets a gradient:
  each token is scaled by w / stop_gradient(w) with w = softmax over the
  selected scores, which is 1 in value and d log w in derivative.
  """
  batch = query_BxDk.shape[0]
  key_dim = query_BxDk.shape[-1]
  scores_BxM = _scores(query_BxDk, keys)
  if dropped_BxM is not None:
    scores_BxM = jnp.where(
        dropped_BxM, scores_BxM - _DROPPED_PENALTY, scores_BxM
    )
  top_BxT, index_BxT = jax.lax.top_k(scores_BxM, config.num_tokens)
  weight_BxT = jax.nn.softmax(top_BxT / np.sqrt(key_dim), axis=-1)
  gate_BxT = weight_BxT / jax.lax.stop_gradient(weight_BxT)
  tokens_BxTxD = _gather_rows(bank, index_BxT) * gate_BxT[..., None]
  return TapeReadout(
      tokens_BxTxD=tokens_BxTxD,
      mask_BxT=jnp.ones((batch, config.num_tokens), bool),
      length_B=jnp.full((batch,), config.num_tokens, jnp.int32),
      loss_B=jnp.zeros((batch,), jnp.float32),
      indices_BxSxK=index_BxT[:, None, :],
      weights_BxSxK=weight_BxT[:, None, :],
  )
