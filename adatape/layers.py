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


class PatchEmbed(nn.Module):
  """A P x P convolution of stride P (`VALID`), computed as one matmul of
  the [B * H/P * W/P, P * P * C] patches: `[B, H, W, C]` ->
  `[B, H/P, W/P, features]`.

  Its parameters are those of `nn.Conv(features, (P, P), strides=(P, P))`
  (kernel [P, P, C, features], bias; the same initialisers), so trees,
  checkpoints and initial values are unchanged. Why not the convolution:
  on the H200 in bfloat16, cuDNN ran the ViT-S/16 stem's forward in 1.0 ms
  of a 34.9 ms train step at batch 256, a matmul of 30 GFLOP that the
  618 TFLOP/s measured there does in 0.05 ms; AdaTape's input bank and its
  weight gradient took 1.5 ms more
  (experiments/results/throughput_nvidia_h200.txt). As a matmul, the
  stem took 0.17 ms, forward and weight gradient, on a second H200
  (throughput_nvidia_h200_ops.txt).
  """

  features: int
  patch_size: int
  dtype: Any = None

  @nn.compact
  def __call__(self, image_BxHxWxC: jax.Array) -> jax.Array:
    p = self.patch_size
    batch, height, width, channels = image_BxHxWxC.shape
    kernel = self.param(
        "kernel",
        nn.initializers.lecun_normal(),
        (p, p, channels, self.features),
    )
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
    x, kernel, bias = nn.dtypes.promote_dtype(
        image_BxHxWxC, kernel, bias, dtype=self.dtype
    )
    rows, cols = height // p, width // p
    patches = x.reshape(batch, rows, p, cols, p, channels)
    patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(
        batch, rows, cols, p * p * channels
    )
    return patches @ kernel.reshape(p * p * channels, self.features) + bias


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


def platform() -> str:
  """The platform of the first device ("cpu", "gpu", "tpu"): it picks
  the implementations measured per platform (the attention here, the tape
  reader's top-k and early exit)."""
  return jax.devices()[0].platform


def cudnn_head_dims() -> int:
  """The largest head dimension cuDNN's fused attention takes here: 256 on
  Hopper and later GPUs, 128 before (and off a GPU, where it never runs)."""
  capability = getattr(jax.devices()[0], "compute_capability", None) or "0"
  return 256 if float(capability) >= 9.0 else 128


def cudnn_fits(head_dim: int) -> bool:
  """Whether cuDNN's fused attention takes heads of `head_dim` (multiples
  of 8, up to `cudnn_head_dims()`); jax raises for any other."""
  return head_dim % 8 == 0 and head_dim <= cudnn_head_dims()


def check_attention(attention: str, dtype: str, head_dim: int) -> None:
  """Rejects an unknown implementation, or cuDNN where it cannot run."""
  run_config.check_choice("model.attention", attention, ATTENTION)
  if attention == "cudnn":
    run_config.check(
        platform() == "gpu" and dtype == "bfloat16",
        "model.attention='cudnn' needs a GPU and model.dtype='bfloat16' "
        f"(here: {platform()}, {dtype}); choose one of 'auto', 'xla'",
    )
    run_config.check(
        cudnn_fits(head_dim),
        "model.attention='cudnn' needs a head dimension (model.width / "
        f"model.num_heads) that is a multiple of 8 and at most "
        f"{cudnn_head_dims()} (here: {head_dim}); choose one of 'auto', 'xla'",
    )


def attention_implementation(attention: str, dtype: Any, head_dim: int) -> str:
  """The `jax.nn.dot_product_attention` implementation `attention` means
  for heads of `head_dim` computed in `dtype`."""
  if attention != "auto":
    return attention
  fused = (
      platform() == "gpu"
      and jnp.dtype(dtype) == jnp.bfloat16
      and cudnn_fits(head_dim)
  )
  return "cudnn" if fused else "xla"


def _extend_sequence(x_BxLxNxH: jax.Array, extra: int) -> jax.Array:
  return jnp.pad(x_BxLxNxH, ((0, 0), (0, extra), (0, 0), (0, 0)))


def cudnn_arguments(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: jax.Array | None,
    keys_are_prefix: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array, dict[str, jax.Array]]:
  """Query, key, value `[B, L, N, H]` and a boolean mask broadcastable to
  `[B, 1, T, S]` (or None), in the shapes cuDNN's fused attention takes:
  `(query, key, value, keyword arguments of jax.nn.dot_product_attention)`.

  jax's cuDNN wrapper trains only on even T and S (it counts a bias as
  present even when none is given), and takes a mask as an additive bias
  of the full `[T, S]` (a key-padding mask `[B, 1, 1, S]` is refused). So
  an odd length gets one extra position, a zero key hidden from every
  query and a zero query whose row the caller cuts off (its output is
  never used, so it sends no gradient back); a mask is spread over the
  query rows; without a mask the extra key is hidden by sequence lengths,
  and no bias tensor is built. With `keys_are_prefix` (the caller's promise
  that each example's valid keys come first: a key mask `[B, 1, 1, S]` of
  the form `arange(S) < n`, as AdaTape's main tokens then one tape), the
  mask becomes those lengths too, and no bias is built either. Equal to
  the plain call for any implementation (tests/test_precision.py).
  """
  batch, t, s = query.shape[0], query.shape[1], key.shape[1]
  pad_t, pad_s = t % 2, s % 2
  query = _extend_sequence(query, pad_t)
  key, value = _extend_sequence(key, pad_s), _extend_sequence(value, pad_s)
  if mask is not None and not keys_are_prefix:
    mask = jnp.broadcast_to(jnp.asarray(mask, bool), (batch, 1, t, s))
    # The extra query row repeats the last row's mask; the extra key is
    # hidden from every row.
    mask = jnp.pad(mask, ((0, 0), (0, 0), (0, pad_t), (0, 0)), mode="edge")
    mask = jnp.pad(mask, ((0, 0), (0, 0), (0, 0), (0, pad_s)))
    return query, key, value, dict(mask=mask)
  if mask is None and not (pad_t or pad_s):
    return query, key, value, {}
  if mask is None:
    lengths_B = jnp.full((batch,), s, jnp.int32)
  else:
    key_mask = jnp.broadcast_to(jnp.asarray(mask, bool), (batch, 1, 1, s))
    lengths_B = key_mask[:, 0, 0].sum(-1, dtype=jnp.int32)
  lengths = dict(
      query_seq_lengths=jnp.full((batch,), t, jnp.int32),
      key_value_seq_lengths=lengths_B,
  )
  return query, key, value, lengths


def attention_fn(attention: str, dtype: Any, keys_are_prefix: bool = False):
  """An `attention_fn` for `nn.MultiHeadDotProductAttention`.

  Scores, softmax and the weighted sum go through
  `jax.nn.dot_product_attention`, so a GPU runs cuDNN's fused kernel and
  never holds the [B, heads, L, L] scores in memory. The key-padding mask
  (unread tape slots, halted tokens) goes to XLA as is, and to cuDNN in the
  shapes it takes (`cudnn_arguments`); a model with nothing to mask
  passes none, and cuDNN then runs without a bias; so does one whose valid
  keys come first (`keys_are_prefix`). Attention dropout is
  not part of that function: with `attention_dropout` > 0 in training,
  Flax's own unfused attention runs instead.
  """
  compute_dtype = dtype  # `attend` has a `dtype` argument of its own.

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
    # The head dimension is known only here.
    chosen = attention_implementation(attention, compute_dtype, query.shape[-1])
    if chosen == "cudnn":
      q, k, v, kwargs = cudnn_arguments(
          query, key, value, mask, keys_are_prefix
      )
      out = jax.nn.dot_product_attention(
          q, k, v, implementation="cudnn", **kwargs
      )
      return out[:, : query.shape[1]]
    if mask is not None:
      mask = jnp.asarray(mask, bool)
    return jax.nn.dot_product_attention(
        query, key, value, mask=mask, implementation=chosen
    )

  return attend
