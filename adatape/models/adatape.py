"""AdaTape: a Transformer whose input is extended by an adaptively read tape.

One model for every task: the stem decides what the main tokens are (a
single flattened token for parity, image patches for ViT), the bank decides
what the tape is read from, and `tape.layers` decides before which blocks a
tape is appended. Each appended tape adds T slots; its mask marks the slots
each example actually read, and the encoder's key-padding masks and masked
pooling make the others invisible.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from adatape import run_config
from adatape import tape as tape_lib
from adatape.models import encoder
from adatape.models import outputs
from adatape.models import stems
from adatape.tape import banks


@dataclasses.dataclass(frozen=True)
class Config:
  """AdaTape model settings (the `model.*` keys besides the encoder size).

  Attributes:
    encoder: encoder size.
    tape: tape settings (`tape.*`).
    num_classes: classifier outputs (from the data).
    input_shape: shape of one example (from the data).
    stem: "flatten" (parity), "sequence" or "patches".
    classifier: "gap" (masked mean over valid tokens) or "token".
    patch_size: main patch size for the patches stem.
    bank_patch_size: patch size of the input-driven image bank.
    posemb: learned position embeddings for the main tokens.
    head_bias_init: initial classifier bias (-6.9 in the official ImageNet
      config, for sigmoid cross-entropy over 1000 classes).
    pool_include_padded_tape: average over all slots, padded ones included,
      as the official code did (bug B3). For measurement only.
  """

  encoder: encoder.EncoderConfig
  tape: tape_lib.TapeConfig
  num_classes: int
  input_shape: tuple[int, ...]
  stem: str = "flatten"
  classifier: str = "gap"
  patch_size: int = 16
  bank_patch_size: int = 8
  posemb: bool = False
  head_bias_init: float = 0.0
  pool_include_padded_tape: bool = False

  def __post_init__(self):
    stems.check_input(self.stem, self.input_shape, self.patch_size)
    run_config.check_choice("model.classifier", self.classifier,
                            ("gap", "token"))
    self.tape.check_layers(self.encoder.depth)
    if self.tape.bank == "input" and self.stem == "patches":
      run_config.check(
          self.input_shape[0] % self.bank_patch_size == 0,
          f"model.bank_patch_size={self.bank_patch_size} must divide the "
          f"image size {self.input_shape[:2]}")
    entries = banks.bank_entries(
        self.tape.bank, stem=self.stem, input_shape=self.input_shape,
        bank_size=self.tape.bank_size, bank_patch_size=self.bank_patch_size)
    what = ("tape.bank_size" if self.tape.bank == "learn" else
            "one entry per input element" if self.stem != "patches" else
            "model.bank_patch_size patches")
    self.tape.check_bank(entries, self.encoder.width, what)


class Model(nn.Module):
  """AdaTape classifier; returns a ModelOutput."""

  config: Config

  @nn.compact
  def __call__(self, inputs: jax.Array, *, train: bool
               ) -> outputs.ModelOutput:
    cfg = self.config
    enc = cfg.encoder
    x = stems.Stem(cfg.stem, enc.width, cfg.patch_size, cfg.posemb,
                   cls_token=cfg.classifier == "token", dropout=enc.dropout,
                   name="stem")(inputs, train=train)
    bank = banks.create(cfg.tape.bank, stem=cfg.stem, width=enc.width,
                        bank_size=cfg.tape.bank_size,
                        bank_patch_size=cfg.bank_patch_size)(inputs)
    num_main = x.shape[1]
    mask_BxL = jnp.ones(x.shape[:2], bool)
    tape_masks, lengths, losses = [], [], []
    for i in range(enc.depth):
      if i in cfg.tape.layers:
        readout = tape_lib.TapeAppender(cfg.tape, name=f"tape_{i}")(
            x, mask_BxL, bank, train=train)
        x = jnp.concatenate([x, readout.tokens_BxTxD], axis=1)
        mask_BxL = jnp.concatenate([mask_BxL, readout.mask_BxT], axis=1)
        tape_masks.append(readout.mask_BxT)
        lengths.append(readout.length_B)
        losses.append(readout.loss_B)
      x = encoder.EncoderBlock(
          enc, tape_mlp_dim=cfg.tape.encoder_mlp_dim,
          tape_dropout=cfg.tape.dropout, name=f"encoderblock_{i}")(
              x, mask_BxL, num_main=num_main, train=train)
    x = nn.LayerNorm(name="encoder_norm")(x)
    pool_mask = (jnp.ones_like(mask_BxL) if cfg.pool_include_padded_tape
                 else mask_BxL)
    logits = encoder.Head(cfg.num_classes, cfg.head_bias_init, name="head")(
        encoder.pool(x, pool_mask, cfg.classifier))
    atr_loss_B = sum(losses)
    return outputs.ModelOutput(
        logits=logits,
        aux_loss_B=cfg.tape.loss_weight * atr_loss_B,
        tape_length_B=sum(lengths),
        tape_mask_BxT=jnp.concatenate(tape_masks, axis=1),
        atr_loss_B=atr_loss_B)
