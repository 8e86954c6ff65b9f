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


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(stems.ClassifierConfig):
  """AdaTape settings beyond the shared classifier fields.

  Attributes:
    tape: tape settings (`tape.*`).
    stem: default "flatten" (parity's single main token).
    posemb: default False (parity is permutation invariant).
    bank_patch_size: patch size of the input-driven image bank.
    pool_include_padded_tape: average over all slots, padded ones included,
      as the official code did (bug B3). For measurement only.
  """

  tape: tape_lib.TapeConfig
  stem: str = "flatten"
  posemb: bool = False
  bank_patch_size: int = 8
  pool_include_padded_tape: bool = False

  def __post_init__(self):
    super().__post_init__()
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
    x = cfg.make_stem()(inputs, train=train)
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
    pool_mask = (jnp.ones_like(mask_BxL) if cfg.pool_include_padded_tape
                 else mask_BxL)
    logits = cfg.classify(x, pool_mask)
    atr_loss_B = sum(losses)
    return outputs.ModelOutput(
        logits=logits,
        aux_loss_B=cfg.tape.loss_weight * atr_loss_B,
        tape_length_B=sum(lengths),
        tape_mask_BxT=jnp.concatenate(tape_masks, axis=1),
        atr_loss_B=atr_loss_B)
