"""TapeAppender: the Linen module that turns a residual stream into a tape.

It owns the tape's parameters (the shared bank LayerNorm and the optional GLU
tape MLP) and its randomness (query noise, bank dropout), forms the query
from the stream, and calls the pure `reader.read_tape`. Models call it
before the blocks named in `tape.layers` and concatenate its tokens and mask.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from adatape import layers
from adatape.tape import config as tape_config
from adatape.tape import reader


class TapeAppender(nn.Module):
  """Reads a tape for the current stream `x` from a (raw) bank."""

  config: tape_config.TapeConfig

  @nn.compact
  def __call__(
      self,
      x_BxLxD: jax.Array,
      mask_BxL: jax.Array,
      bank: jax.Array,
      *,
      train: bool,
  ) -> reader.TapeReadout:
    cfg = self.config
    # The query, like the whole reader, is float32 whatever the model's
    # dtype: scores, top-k and halting sums compare against a threshold.
    if cfg.query_type == "token":
      query_BxD = x_BxLxD[:, 0].astype(jnp.float32)
    else:
      query_BxD = layers.masked_mean(x_BxLxD.astype(jnp.float32), mask_BxL)
    if train and cfg.query_noise > 0:
      noise = jax.random.normal(self.make_rng("dropout"), query_BxD.shape)
      query_BxD = query_BxD + cfg.query_noise * noise
    dropped_BxM = None
    if train and cfg.bank_dropout > 0:
      dropped_BxM = jax.random.bernoulli(
          self.make_rng("dropout"),
          cfg.bank_dropout,
          (x_BxLxD.shape[0], bank.shape[-2]),
      )
    # One LayerNorm for the query and every bank entry, as officially.
    norm = nn.LayerNorm(name="bank_norm")
    # At inference reading stops once every example has halted, where
    # that is the faster (`TapeConfig.exit_early`).
    readout = reader.read_tape(
        norm(query_BxD.astype(jnp.float32)),
        norm(bank.astype(jnp.float32)),
        cfg,
        dropped_BxM,
        exit_early=not train and cfg.exits_early(layers.platform()),
    )
    tokens = readout.tokens_BxTxD.astype(x_BxLxD.dtype)
    if cfg.mlp_dim:
      tokens = layers.GluMlp(
          cfg.mlp_dim, cfg.dropout, x_BxLxD.dtype, name="tape_mlp"
      )(tokens, train=train)
      tokens = jnp.where(readout.mask_BxT[..., None], tokens, 0.0)
    return readout._replace(tokens_BxTxD=tokens)
