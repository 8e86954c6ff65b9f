"""The standard Transformer / ViT classifier, AdaTape's first baseline."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from adatape.models import encoder
from adatape.models import flops
from adatape.models import outputs
from adatape.models import stems

# Every example runs every layer; reported so that tables compare compute
# in each method's own unit.
METRICS = (outputs.Metric("layers", "layers", cost=True),)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(stems.ClassifierConfig):
  """Transformer settings: only the shared classifier fields."""


class Model(nn.Module):
  """Stem -> pre-LN encoder -> LayerNorm -> pool -> head."""

  config: Config

  @nn.compact
  def __call__(self, inputs: jax.Array, *, train: bool) -> outputs.ModelOutput:
    cfg = self.config
    enc = cfg.encoder
    x = cfg.make_stem()(inputs, train=train)
    for i in range(enc.depth):
      # No token is padding: no attention mask (cuDNN then needs no bias).
      x = encoder.EncoderBlock(enc, name=f"encoderblock_{i}")(
          x, None, num_main=x.shape[1], train=train
      )
    tokens = jnp.full(x.shape[:1], x.shape[1], jnp.float32)
    return outputs.ModelOutput(
        logits=cfg.classify(x, jnp.ones(x.shape[:2], bool)),
        aux_loss_B=jnp.zeros((x.shape[0],), jnp.float32),
        flops_B=enc.depth * flops.block(enc.width, enc.mlp_dim, tokens),
        metrics_B={"layers": jnp.full(x.shape[:1], enc.depth, jnp.float32)},
    )
