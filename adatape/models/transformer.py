"""The standard Transformer / ViT classifier, AdaTape's first baseline."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from adatape import run_config
from adatape.models import encoder
from adatape.models import outputs
from adatape.models import stems


@dataclasses.dataclass(frozen=True)
class Config:
  """Transformer settings (`model.*` besides the encoder size).

  Attributes:
    encoder: encoder size.
    num_classes: classifier outputs (from the data).
    input_shape: shape of one example (from the data).
    stem: "sequence" (one token per element) or "patches" (ViT).
    classifier: "gap" or "token".
    patch_size: patch size for the patches stem.
    posemb: learned position embeddings.
    head_bias_init: initial classifier bias.
  """

  encoder: encoder.EncoderConfig
  num_classes: int
  input_shape: tuple[int, ...]
  stem: str = "sequence"
  classifier: str = "gap"
  patch_size: int = 16
  posemb: bool = True
  head_bias_init: float = 0.0

  def __post_init__(self):
    stems.check_input(self.stem, self.input_shape, self.patch_size)
    run_config.check_choice("model.classifier", self.classifier,
                            ("gap", "token"))


class Model(nn.Module):
  """Stem -> pre-LN encoder -> LayerNorm -> pool -> head."""

  config: Config

  @nn.compact
  def __call__(self, inputs: jax.Array, *, train: bool
               ) -> outputs.ModelOutput:
    cfg = self.config
    enc = cfg.encoder
    x = stems.Stem(cfg.stem, enc.width, cfg.patch_size, cfg.posemb,
                   cls_token=cfg.classifier == "token", dropout=enc.dropout,
                   name="stem")(inputs, train=train)
    mask_BxL = jnp.ones(x.shape[:2], bool)
    for i in range(enc.depth):
      x = encoder.EncoderBlock(enc, name=f"encoderblock_{i}")(
          x, mask_BxL, num_main=x.shape[1], train=train)
    x = nn.LayerNorm(name="encoder_norm")(x)
    logits = encoder.Head(cfg.num_classes, cfg.head_bias_init, name="head")(
        encoder.pool(x, mask_BxL, cfg.classifier))
    return outputs.ModelOutput(
        logits=logits, aux_loss_B=jnp.zeros((x.shape[0],), jnp.float32))
