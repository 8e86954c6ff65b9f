"""Halting primitives for Adaptive Computation Time (Graves 2016), once.

Every ACT-style model (Universal Transformer, and the depth-adaptive
baselines) steps the same state machine; it lives here so that a fix to the
remainder arithmetic reaches all of them. Shapes are whatever the halting
granularity is: `[B]` per example or `[B, L]` per token. Arithmetic is float32
(in bfloat16, 1 - 0.01 rounds to about 0.988).

Semantics follow tensor2tensor's `universal_transformer_act` with one
deliberate difference: at the last step every still-running unit halts and
takes its remainder (Graves' rule), so the halting weights of every unit sum
to exactly one and the ponder cost N + R is always defined.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

ACT_TYPES = ("basic", "accumulated")


class ActState(NamedTuple):
  """Cumulative halting probability h, remainder R, update count N."""

  halting: jax.Array
  remainder: jax.Array
  updates: jax.Array


def init(shape: tuple[int, ...]) -> ActState:
  zeros = jnp.zeros(shape, jnp.float32)
  return ActState(halting=zeros, remainder=zeros, updates=zeros)


def step(
    state: ActState,
    prob: jax.Array,
    *,
    epsilon: float,
    is_last: jax.Array | bool,
) -> tuple[ActState, jax.Array]:
  """One ACT step: returns the new state and this step's output weights.

  Args:
    state: the state before the step.
    prob: halting probability p of this step, same shape as the state.
    epsilon: a unit halts once h would exceed 1 - epsilon.
    is_last: whether this is the last allowed step (forces halting).

  Returns:
    (new state, weight) where weight is p for a unit that keeps running,
    the remainder R for a unit that halts now, and 0 for halted units.
  """
  prob = prob.astype(jnp.float32)
  h = state.halting
  running = (h < 1.0).astype(jnp.float32)
  crossing = (h + prob * running > 1.0 - epsilon).astype(jnp.float32)
  halts = jnp.maximum(crossing, jnp.asarray(is_last, jnp.float32)) * running
  continues = running * (1.0 - halts)
  h = h + prob * continues
  remainder = state.remainder + halts * (1.0 - h)
  h = h + halts * (1.0 - h)
  updates = state.updates + continues + halts
  weight = prob * continues + halts * remainder
  return ActState(halting=h, remainder=remainder, updates=updates), weight


def ponder_cost(state: ActState) -> jax.Array:
  """Graves' ponder cost rho = N + R per unit."""
  return state.updates + state.remainder


def accumulate(
    output: jax.Array, value: jax.Array, weight: jax.Array, act_type: str
) -> jax.Array:
  """Folds one step's value into the output.

  "accumulated" is Graves' mean field, sum_n w_n y_n. "basic" is the
  tensor2tensor/scenic default, an exponential blend w y + (1 - w) o.
  `weight` must broadcast against `value`.
  """
  weight = weight.astype(value.dtype)
  if act_type == "accumulated":
    return output + weight * value
  return weight * value + (1.0 - weight) * output


def running(state: ActState) -> jax.Array:
  """Units that have not halted yet (float 0/1), i.e. that the next step
  updates."""
  return (state.halting < 1.0).astype(jnp.float32)


# PonderNet (Banino et al. 2021): a halting *distribution* over steps.


def geometric_log_probs(logits_BxS: jax.Array) -> jax.Array:
  """log p_n of halting exactly at step n, from conditional halting logits.

  p_n = lambda_n * prod_{j<n} (1 - lambda_j) with lambda_n = sigmoid(logit),
  computed in log space (log_sigmoid) so that late steps underflow to a
  finite large negative number instead of log(0). The last step's lambda is
  forced to 1 (PonderNet's truncation), so each row sums to one.
  """
  logits = logits_BxS.astype(jnp.float32)
  num_steps = logits.shape[-1]
  is_last = jnp.arange(num_steps) == num_steps - 1
  log_halt = jnp.where(is_last, 0.0, jax.nn.log_sigmoid(logits))
  log_continue = jax.nn.log_sigmoid(-logits)
  survived = jnp.cumsum(log_continue, axis=-1) - log_continue
  return log_halt + survived


def geometric_prior_log_probs(num_steps: int, lambda_p: float) -> jax.Array:
  """log of PonderNet's geometric prior over steps 1..S, renormalised.

  p_G(n) = lambda_p (1 - lambda_p)^(n-1), divided by its mass on 1..S (the
  reference implementation leaves it unnormalised, summing to
  1 - (1 - lambda_p)^S).
  """
  n = jnp.arange(num_steps, dtype=jnp.float32)
  log_p = jnp.log(lambda_p) + n * jnp.log1p(-lambda_p)
  return log_p - jax.nn.logsumexp(log_p)


def kl(log_p_BxS: jax.Array, log_q_S: jax.Array) -> jax.Array:
  """KL(p || q) per row: sum_n p_n (log p_n - log q_n)."""
  p = jnp.exp(log_p_BxS)
  return jnp.sum(p * (log_p_BxS - log_q_S), axis=-1)


# A-ViT's distributional prior over the layer at which tokens halt.

DEPTH_PRIORS = ("gaussian", "laplace")


def depth_prior(
    kind: str, num_layers: int, mean: float, scale: float
) -> jax.Array:
  """A normalised target distribution over layers 1..L.

  "gaussian" is A-ViT's N(mean, scale); "laplace" is the AdaViT seed
  project's Laplace(mean, scale / sqrt(2)), which has the same variance.
  Unlike the official code, the target is normalised over the L layers, so
  the KL against it is a true divergence.
  """
  layer = jnp.arange(1, num_layers + 1, dtype=jnp.float32)
  if kind == "laplace":
    log_t = -jnp.abs(layer - mean) / (scale / jnp.sqrt(2.0))
  else:
    log_t = -0.5 * ((layer - mean) / scale) ** 2
  return jax.nn.softmax(log_t)


def halting_score_prior_loss(
    scores_LxBxT: jax.Array, valid_BxT: jax.Array, target_L: jax.Array
) -> jax.Array:
  """A-ViT's distributional prior, per example: KL(target || h).

  h^l is the mean halting score of layer l over the example's tokens (as in
  the paper and the official code: the raw scores, of halted tokens too,
  not the ACT weights), normalised over the layers and clipped to [0.01,
  0.99] as the official code does. Two fixes are kept: the mean is per
  example over its valid tokens (the official code averages over the batch
  and drops its first example instead of the class token), and the target
  is a normalised distribution (`depth_prior`).

  Args:
    scores_LxBxT: halting scores h of every layer, in [0, 1].
    valid_BxT: 1 for real tokens, 0 for padding.
    target_L: the prior over layers (sums to 1).

  Returns:
    The KL divergence per example, [B].
  """
  valid = valid_BxT.astype(jnp.float32)
  h_LxB = jnp.einsum("lbt,bt->lb", scores_LxBxT, valid) / valid.sum(1)
  dist_BxL = (h_LxB / jnp.sum(h_LxB, axis=0, keepdims=True)).T
  dist_BxL = jnp.clip(dist_BxL, 0.01, 0.99)
  return jnp.sum(target_L * (jnp.log(target_L) - jnp.log(dist_BxL)), axis=-1)
