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


def step(state: ActState, prob: jax.Array, *, epsilon: float,
         is_last: jax.Array | bool) -> tuple[ActState, jax.Array]:
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


def accumulate(output: jax.Array, value: jax.Array, weight: jax.Array,
               act_type: str) -> jax.Array:
  """Folds one step's value into the output.

  "accumulated" is Graves' mean field, sum_n w_n y_n. "basic" is the
  tensor2tensor/scenic default, an exponential blend w y + (1 - w) o.
  `weight` must broadcast against `value`.
  """
  weight = weight.astype(value.dtype)
  if act_type == "accumulated":
    return output + weight * value
  return weight * value + (1.0 - weight) * output
