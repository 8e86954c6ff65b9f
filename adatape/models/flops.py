"""Analytic encoder FLOPs, so adaptive methods are compared on one scale.

Adaptive methods mostly do not save compute as implemented under jit (every
token runs every step; masks only change weights), so, like the papers, we
report the compute their decisions require: a multiply-add is 2 FLOPs, and a
block applied to `tokens` queries attending over `keys` keys costs

  tokens * (8 D^2 + 4 D F) + 4 * tokens * keys * D

(Q, K, V and output projections; scores and weighted values; the two MLP
matrices). LayerNorms, softmaxes, biases and activations are left out, as
are the stem and the head, which every method on a task shares.
"""

import jax
import jax.numpy as jnp


def attention(width: int, tokens: jax.Array, keys: jax.Array) -> jax.Array:
  """Self-attention sublayer: projections plus scores and weighted values."""
  tokens = jnp.asarray(tokens, jnp.float32)
  return tokens * 8.0 * width**2 + 4.0 * tokens * keys * width


def mlp(width: int, hidden: int, tokens: jax.Array) -> jax.Array:
  """A two-matrix MLP of `hidden` units (GELU, or GLU with 2x the first)."""
  return jnp.asarray(tokens, jnp.float32) * 4.0 * width * hidden


def glu_mlp(width: int, hidden: int, tokens: jax.Array) -> jax.Array:
  """The tape's GLU MLP: D -> 2H, then H -> D."""
  return jnp.asarray(tokens, jnp.float32) * 6.0 * width * hidden


def block(
    width: int, mlp_dim: int, tokens: jax.Array, keys: jax.Array | None = None
) -> jax.Array:
  """One encoder block; `keys` defaults to `tokens` (plain self-attention)."""
  keys = tokens if keys is None else keys
  return attention(width, tokens, keys) + mlp(width, mlp_dim, tokens)


def dense(d_in: int, d_out: int, tokens: jax.Array) -> jax.Array:
  """A Dense layer applied to `tokens` vectors."""
  return jnp.asarray(tokens, jnp.float32) * 2.0 * d_in * d_out
