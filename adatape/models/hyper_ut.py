"""Hyper-UT: a Universal Transformer whose FFN weights are generated.

The paper (arXiv 2310.08866) gives no equations for its Hyper-Modules, so
this follows the spec's reading of it: the shared block's FFN matrices are
a per-example mixture of a pool of M weight sets,
W(x) = sum_m alpha_m(x) E_m, with alpha = softmax(q(x) . k_m / sqrt(d))
from a single-head attention router whose query reads the example's mean
state at the current step (so each ACT step can generate a different
function) and whose keys are learned, one per pool entry. Everything else
is the Universal Transformer with ACT of `universal_transformer.py`
(per-token or per-example halting, the same ponder cost), which this
module reuses.

The generated weights are formed explicitly, `[B, D, F]` per step, which
costs M * (D F + F D) multiply-adds per example and step; that is cheap at
the sizes this is meant for (and counted in the reported FLOPs).
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from adatape import layers
from adatape import run_config
from adatape.models import encoder
from adatape.models import flops
from adatape.models import universal_transformer

METRICS = universal_transformer.METRICS


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(universal_transformer.Config):
  """Hyper-UT settings beyond the Universal Transformer's.

  Attributes:
    pool_size: M, the number of weight sets in the pool.
    router_dim: d, the router's query/key size.
  """

  pool_size: int = 4
  router_dim: int = 32

  def __post_init__(self):
    super().__post_init__()
    for name in ("pool_size", "router_dim"):
      value = getattr(self, name)
      run_config.check(value >= 1, f"model.{name}={value} must be >= 1")

  def make_block(self, name: str) -> nn.Module:
    return HyperBlock(self.encoder, self.pool_size, self.router_dim, name=name)

  def step_flops(self, tokens_B: jax.Array, keys_B: jax.Array) -> jax.Array:
    enc = self.encoder
    router = flops.dense(enc.width, self.router_dim, 1) + flops.dense(
        self.router_dim, self.pool_size, 1
    )
    generate = 2.0 * self.pool_size * 2 * enc.width * enc.mlp_dim
    return super().step_flops(tokens_B, keys_B) + router + generate


class HyperBlock(nn.Module):
  """Pre-LN block with shared attention and a router-generated FFN."""

  config: encoder.EncoderConfig
  pool_size: int
  router_dim: int

  @nn.compact
  def __call__(
      self,
      x_BxLxD: jax.Array,
      mask_BxL: jax.Array,
      *,
      num_main: int,
      train: bool,
  ) -> jax.Array:
    del num_main  # No tape here.
    cfg = self.config
    d, f, m = cfg.width, cfg.mlp_dim, self.pool_size
    x_BxLxD = x_BxLxD + encoder.attention_sublayer(
        cfg, x_BxLxD, mask_BxL, train
    )
    y = nn.LayerNorm(dtype=cfg.compute_dtype, name="norm_mlp")(x_BxLxD)
    query_BxR = nn.Dense(self.router_dim, name="router_query")(
        layers.masked_mean(y, mask_BxL)
    )
    keys_MxR = self.param(
        "router_keys", nn.initializers.normal(1.0), (m, self.router_dim)
    )
    alpha_BxM = jax.nn.softmax(
        query_BxR @ keys_MxR.T / jnp.sqrt(float(self.router_dim)), axis=-1
    )
    self.sow("intermediates", "alpha", alpha_BxM)
    init = nn.initializers.xavier_uniform(
        in_axis=-2, out_axis=-1, batch_axis=(0,)
    )
    w1_MxDxF = self.param("pool_w1", init, (m, d, f))
    b1_MxF = self.param("pool_b1", nn.initializers.zeros, (m, f))
    w2_MxFxD = self.param("pool_w2", init, (m, f, d))
    b2_MxD = self.param("pool_b2", nn.initializers.zeros, (m, d))
    w1_BxDxF = jnp.einsum("bm,mdf->bdf", alpha_BxM, w1_MxDxF)
    w2_BxFxD = jnp.einsum("bm,mfd->bfd", alpha_BxM, w2_MxFxD)
    h = jnp.einsum("bld,bdf->blf", y, w1_BxDxF) + (alpha_BxM @ b1_MxF)[:, None]
    h = nn.Dropout(cfg.dropout)(nn.gelu(h), deterministic=not train)
    out = (
        jnp.einsum("blf,bfd->bld", h, w2_BxFxD) + (alpha_BxM @ b2_MxD)[:, None]
    )
    out = out.astype(x_BxLxD.dtype)
    return x_BxLxD + nn.Dropout(cfg.dropout)(out, deterministic=not train)


Model = universal_transformer.Model
