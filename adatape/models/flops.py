"""Analytic encoder FLOPs, so adaptive methods are compared on one scale.

Adaptive methods mostly do not save compute as implemented under jit (every
token runs every step; masks only change weights), so, like the papers, we
report the compute their decisions require: a multiply-add is 2 FLOPs, and a
block applied to `tokens` queries attending over `keys` keys costs

  tokens * (8 D^2 + 4 D F) + 4 * tokens * keys * D

(Q, K, V and output projections; scores and weighted values; the two MLP
matrices). LayerNorms, softmaxes, biases and activations are left out, as
are the stem and the head, which every method on a task shares: models
report encoder FLOPs plus their own overhead (`ModelOutput.flops_B`), and
`stems.ClassifierConfig.stem_head_flops` adds the rest for a whole-model
count (MFU in `experiments/throughput.py`). A train step costs about 3x
the forward (the backward pass computes two products per forward one).
"""

import jax
import jax.numpy as jnp


def _count(tokens: jax.Array | float) -> jax.Array | float:
  """Token counts as float32 arrays; plain numbers stay numbers, so a
  count of constants (a bank's cost) is a Python float even under jit."""
  if isinstance(tokens, (int, float)):
    return float(tokens)
  return jnp.asarray(tokens, jnp.float32)


def attention(width: int, tokens: jax.Array, keys: jax.Array) -> jax.Array:
  """Self-attention sublayer: projections plus scores and weighted values."""
  tokens = _count(tokens)
  return tokens * 8.0 * width**2 + 4.0 * tokens * keys * width


def mlp(width: int, hidden: int, tokens: jax.Array) -> jax.Array:
  """A two-matrix MLP of `hidden` units (GELU, or GLU with 2x the first)."""
  return _count(tokens) * 4.0 * width * hidden


def glu_mlp(width: int, hidden: int, tokens: jax.Array) -> jax.Array:
  """The tape's GLU MLP: D -> 2H, then H -> D."""
  return _count(tokens) * 6.0 * width * hidden


def block(
    width: int, mlp_dim: int, tokens: jax.Array, keys: jax.Array | None = None
) -> jax.Array:
  """One encoder block; `keys` defaults to `tokens` (plain self-attention)."""
  keys = tokens if keys is None else keys
  return attention(width, tokens, keys) + mlp(width, mlp_dim, tokens)


def dense(d_in: int, d_out: int, tokens: jax.Array) -> jax.Array:
  """A Dense layer applied to `tokens` vectors."""
  return _count(tokens) * 2.0 * d_in * d_out


def patch_embedding(
    patch: int, channels: int, width: int, tokens: jax.Array
) -> jax.Array:
  """A patch-`patch` convolution (stride = patch) giving `tokens` vectors."""
  return dense(patch * patch * channels, width, tokens)


# A train step: the forward, and a backward pass of two products (input
# and weight gradients) for every forward one.
TRAIN_STEP_FACTOR = 3.0
