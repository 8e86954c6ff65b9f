"""Linen layers that both the models and the tape build on.

The tape (`adatape/tape/`) sits below the models: models append tapes, and
the tape must not reach back into `models/` for its pieces. What both need
lives here: the initialisers every Dense of the encoder uses, the GELU MLP
of encoder blocks, the gated MLP of tape tokens, and the masked mean that
pools a stream over its valid positions (the query of the tape reader, and
the `gap` classifier).
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from adatape import run_config

# The official ViT's initialisers: Xavier-uniform kernels, near-zero
# biases (so that no unit starts dead or saturated).
KERNEL_INIT = nn.initializers.xavier_uniform()
BIAS_INIT = nn.initializers.normal(stddev=1e-6)


class Mlp(nn.Module):
  """Dense -> GELU -> Dropout -> Dense -> Dropout, computed in `dtype`."""

  hidden: int
  dropout: float = 0.0
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    dense = functools.partial(
        nn.Dense, kernel_init=KERNEL_INIT, bias_init=BIAS_INIT, dtype=self.dtype
    )
    y = nn.gelu(dense(self.hidden)(x))
    y = nn.Dropout(self.dropout)(y, deterministic=not train)
    y = dense(x.shape[-1])(y)
    return nn.Dropout(self.dropout)(y, deterministic=not train)


class GluMlp(nn.Module):
  """Gated MLP used for tape tokens: Dense(2H) -> a * sigmoid(b) -> Dense."""

  hidden: int
  dropout: float = 0.0
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    dense = functools.partial(
        nn.Dense, kernel_init=KERNEL_INIT, bias_init=BIAS_INIT, dtype=self.dtype
    )
    y = nn.glu(dense(2 * self.hidden)(x), axis=-1)
    y = nn.Dropout(self.dropout)(y, deterministic=not train)
    y = dense(x.shape[-1])(y)
    return nn.Dropout(self.dropout)(y, deterministic=not train)


def per_element(dense: nn.Module, x_BxLxC: jax.Array) -> jax.Array:
  """`dense` applied to the [B * L, C] rows of `x`, shaped back to
  [B, L, F]: the same layer, parameters and values, but the kernel's
  gradient becomes one [C, B * L] x [B * L, F] product. With few input
  channels (parity's one-hot C = 3) XLA's CPU backend runs the batched
  form's gradient about 7x slower (0.87 against 0.12 ms at B = 128,
  L = 32, F = 64; the parity AdaTape train step 7-8% faster;
  experiments/results/per_element_dense_cpu.txt)."""
  y = dense(x_BxLxC.reshape(-1, x_BxLxC.shape[-1]))
  return y.reshape(x_BxLxC.shape[:-1] + y.shape[-1:])


def masked_mean(x_BxLxD: jax.Array, mask_BxL: jax.Array) -> jax.Array:
  """Mean over the valid positions of each example.

  Padded positions (tape slots an example did not read, halted tokens)
  get weight zero, so an example's mean never depends on what the rest of
  the batch read (the official code averaged over every slot, so a
  pooled feature changed with the batch it was computed in).
  """
  weights_BxL = mask_BxL.astype(x_BxLxD.dtype)
  total_BxD = jnp.einsum("bl,bld->bd", weights_BxL, x_BxLxD)
  count_Bx1 = jnp.maximum(weights_BxL.sum(axis=1, keepdims=True), 1.0)
  return total_BxD / count_Bx1


# The computation dtypes a model may use (`model.dtype`).
DTYPES = ("float32", "bfloat16")
# Implementations of `jax.nn.dot_product_attention` (`model.attention`):
# `auto` takes cuDNN's fused kernel on a GPU in bfloat16, XLA elsewhere.
ATTENTION = ("auto", "xla", "cudnn")


def _platform() -> str:
  return jax.devices()[0].platform


def check_attention(attention: str, dtype: str) -> None:
  """Rejects an unknown implementation, or cuDNN where it cannot run."""
  run_config.check_choice("model.attention", attention, ATTENTION)
  if attention == "cudnn":
    run_config.check(
        _platform() == "gpu" and dtype == "bfloat16",
        "model.attention='cudnn' needs a GPU and model.dtype='bfloat16' "
        f"(here: {_platform()}, {dtype}); choose one of 'auto', 'xla'",
    )


def attention_implementation(attention: str, dtype: Any) -> str:
  """The `jax.nn.dot_product_attention` implementation `attention` means."""
  if attention != "auto":
    return attention
  fused = _platform() == "gpu" and jnp.dtype(dtype) == jnp.bfloat16
  return "cudnn" if fused else "xla"


def attention_fn(attention: str, dtype: Any):
  """An `attention_fn` for `nn.MultiHeadDotProductAttention`.

  Scores, softmax and the weighted sum go through
  `jax.nn.dot_product_attention`, so a GPU runs cuDNN's fused kernel and
  never holds the [B, heads, L, L] scores in memory. The key-padding mask
  (unread tape slots, halted tokens) is passed as is. Attention dropout is
  not part of that function: with `attention_dropout` > 0 in training,
  Flax's own unfused attention runs instead.
  """
  implementation = attention_implementation(attention, dtype)

  def attend(
      query,
      key,
      value,
      mask=None,
      dropout_rng=None,
      dropout_rate=0.0,
      broadcast_dropout=True,
      deterministic=True,
      dtype=None,
      precision=None,
  ):
    if dropout_rate > 0.0 and not deterministic:
      return nn.dot_product_attention(
          query,
          key,
          value,
          mask=mask,
          dropout_rng=dropout_rng,
          dropout_rate=dropout_rate,
          broadcast_dropout=broadcast_dropout,
          deterministic=deterministic,
          dtype=dtype,
          precision=precision,
      )
    if mask is not None:
      mask = jnp.asarray(mask, bool)
    return jax.nn.dot_product_attention(
        query, key, value, mask=mask, implementation=implementation
    )

  return attend
