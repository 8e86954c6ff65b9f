"""Linen layers that both the models and the tape build on.

The tape (`adatape/tape/`) sits below the models: models append tapes, and
the tape must not reach back into `models/` for its pieces. What both need
lives here: the initialisers every Dense of the encoder uses, the GELU MLP
of encoder blocks, the gated MLP of tape tokens, and the masked mean that
pools a stream over its valid positions (the query of the tape reader, and
the `gap` classifier).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

# The official ViT's initialisers: Xavier-uniform kernels, near-zero
# biases (so that no unit starts dead or saturated).
KERNEL_INIT = nn.initializers.xavier_uniform()
BIAS_INIT = nn.initializers.normal(stddev=1e-6)


class Mlp(nn.Module):
  """Dense -> GELU -> Dropout -> Dense -> Dropout."""

  hidden: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    width = x.shape[-1]
    y = nn.Dense(self.hidden, kernel_init=KERNEL_INIT, bias_init=BIAS_INIT)(x)
    y = nn.gelu(y)
    y = nn.Dropout(self.dropout)(y, deterministic=not train)
    y = nn.Dense(width, kernel_init=KERNEL_INIT, bias_init=BIAS_INIT)(y)
    return nn.Dropout(self.dropout)(y, deterministic=not train)


class GluMlp(nn.Module):
  """Gated MLP used for tape tokens: Dense(2H) -> a * sigmoid(b) -> Dense."""

  hidden: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    width = x.shape[-1]
    y = nn.Dense(2 * self.hidden, kernel_init=KERNEL_INIT, bias_init=BIAS_INIT)(
        x
    )
    y = nn.glu(y, axis=-1)
    y = nn.Dropout(self.dropout)(y, deterministic=not train)
    y = nn.Dense(width, kernel_init=KERNEL_INIT, bias_init=BIAS_INIT)(y)
    return nn.Dropout(self.dropout)(y, deterministic=not train)


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
