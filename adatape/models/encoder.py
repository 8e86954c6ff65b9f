"""Encoder pieces shared by every model: blocks with key-padding masks, pooling.

All models (Transformer, AdaTape, Universal Transformer, and the baselines
built on them) use these layers, so a mask bug is fixed once. Masks are
boolean `[B, L]` (True: a real token). Attention masks keys only, as the
official code does; padded positions are still computed as queries, but no
real token attends to them and pooling skips them, so their values never
reach the output.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from adatape import layers
from adatape import run_config


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  """Size of a pre-LayerNorm Transformer encoder.

  Attributes:
    width: D, the residual width.
    depth: number of blocks (or, for a Universal Transformer, the shared
      block's maximum number of applications).
    num_heads: attention heads; must divide width.
    mlp_dim: hidden size of the GELU MLP.
    dropout: dropout after attention and in the MLP.
    attention_dropout: dropout on attention weights.
    dtype: the computation dtype of every layer ("float32" or "bfloat16");
      parameters stay float32, and tape reading, halting and the loss
      compute in float32 whatever this is.
    attention: "auto", "xla" or "cudnn" (`layers.ATTENTION`): the
      implementation of `jax.nn.dot_product_attention`.
  """

  width: int = 64
  depth: int = 2
  num_heads: int = 4
  mlp_dim: int = 256
  dropout: float = 0.0
  attention_dropout: float = 0.0
  dtype: str = "float32"
  attention: str = "auto"

  def __post_init__(self):
    check = run_config.check
    for name in ("width", "depth", "num_heads", "mlp_dim"):
      value = getattr(self, name)
      check(value >= 1, f"model.{name}={value} must be >= 1")
    check(
        self.width % self.num_heads == 0,
        f"model.num_heads={self.num_heads} must divide model.width="
        f"{self.width}",
    )
    for name in ("dropout", "attention_dropout"):
      value = getattr(self, name)
      check(0.0 <= value < 1.0, f"model.{name}={value} must be in [0, 1)")
    run_config.check_choice("model.dtype", self.dtype, layers.DTYPES)
    layers.check_attention(
        self.attention, self.dtype, self.width // self.num_heads
    )

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)


def attention_mask(mask_BxL: jax.Array | None) -> jax.Array | None:
  """Key-padding mask `[B, 1, 1, L]` for MultiHeadDotProductAttention
  (None: every token is real)."""
  return None if mask_BxL is None else mask_BxL[:, None, None, :]


def attention_sublayer(
    cfg: EncoderConfig,
    x_BxLxD: jax.Array,
    mask_BxL: jax.Array | None,
    train: bool,
    keys_are_prefix: bool = False,
) -> jax.Array:
  """Dropout(Attn(LN(x))), the residual update of a pre-LN block.

  `mask_BxL` None means every token is real: no mask is built, which on a
  GPU lets cuDNN's fused attention run without a bias tensor. So does
  `keys_are_prefix`, the caller's promise that each row of `mask_BxL` is
  True up to some position and False after it (cuDNN then takes lengths).

  Call it inside a compact `__call__`: its LayerNorm and attention become
  submodules of the caller, named `norm_attention` and `attention`, so every
  block (plain, ACM, Hyper-UT) has the same parameter paths and a model can
  start from another's checkpoint.
  """
  y = nn.LayerNorm(dtype=cfg.compute_dtype, name="norm_attention")(x_BxLxD)
  y = nn.MultiHeadDotProductAttention(
      num_heads=cfg.num_heads,
      kernel_init=layers.KERNEL_INIT,
      dropout_rate=cfg.attention_dropout,
      deterministic=not train,
      dtype=cfg.compute_dtype,
      attention_fn=layers.attention_fn(
          cfg.attention, cfg.compute_dtype, keys_are_prefix
      ),
      name="attention",
  )(y, y, mask=attention_mask(mask_BxL))
  return nn.Dropout(cfg.dropout)(y, deterministic=not train)


class EncoderBlock(nn.Module):
  """Pre-LN block: x + Attn(LN(x)); then x + FFN(LN(x)).

  With `tape_mlp_dim` > 0, positions from `num_main` on (the tape) use a
  separate GLU FFN while attention and LayerNorms stay shared (the
  official `enc_tt_mlp_dim`, drawn in the paper's Figure 1).
  `keys_are_prefix`: see `attention_sublayer`.
  """

  config: EncoderConfig
  tape_mlp_dim: int = 0
  tape_dropout: float = 0.0
  keys_are_prefix: bool = False

  @nn.compact
  def __call__(
      self,
      x_BxLxD: jax.Array,
      mask_BxL: jax.Array | None,
      *,
      num_main: int,
      train: bool,
  ) -> jax.Array:
    cfg = self.config
    x_BxLxD = x_BxLxD + attention_sublayer(
        cfg, x_BxLxD, mask_BxL, train, self.keys_are_prefix
    )
    dtype = cfg.compute_dtype
    y = nn.LayerNorm(dtype=dtype, name="norm_mlp")(x_BxLxD)
    has_tape = x_BxLxD.shape[1] > num_main
    if self.tape_mlp_dim and has_tape:
      main = layers.Mlp(cfg.mlp_dim, cfg.dropout, dtype, name="mlp")(
          y[:, :num_main], train=train
      )
      tape = layers.GluMlp(
          self.tape_mlp_dim, self.tape_dropout, dtype, name="tape_mlp"
      )(y[:, num_main:], train=train)
      y = jnp.concatenate([main, tape], axis=1)
    else:
      y = layers.Mlp(cfg.mlp_dim, cfg.dropout, dtype, name="mlp")(
          y, train=train
      )
    return x_BxLxD + y


def pool(x_BxLxD: jax.Array, mask_BxL: jax.Array, classifier: str) -> jax.Array:
  """`gap`: masked mean; `token`: position 0."""
  if classifier == "token":
    return x_BxLxD[:, 0]
  return layers.masked_mean(x_BxLxD, mask_BxL)


class Head(nn.Module):
  """Zero-initialised linear classifier with a configurable bias init.

  It computes in float32 whatever the model's dtype: the logits feed the
  loss, and the matmul is one vector per example.
  """

  num_classes: int
  bias_init: float = 0.0

  @nn.compact
  def __call__(self, x_BxD: jax.Array) -> jax.Array:
    x_BxD = x_BxD.astype(jnp.float32)
    return nn.Dense(
        self.num_classes,
        kernel_init=nn.initializers.zeros,
        bias_init=nn.initializers.constant(self.bias_init),
        name="output_projection",
    )(x_BxD)
