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
from adatape.models import flops
from adatape.models import outputs
from adatape.models import stems
from adatape.tape import banks

METRICS = (
    outputs.Metric(
        "tape_length", "tape tokens", "tape", cost=True, spread=True
    ),
    outputs.Metric("atr_loss", "ATR loss, unweighted, summed over steps"),
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(stems.ClassifierConfig):
  """AdaTape settings beyond the shared classifier fields.

  Attributes:
    tape: tape settings (`tape.*`).
    stem: default "flatten" (parity's single main token).
    posemb: default False (parity is permutation invariant).
    bank_patch_size: patch size of the input-driven image bank.
    pool_include_padded_tape: average over all slots, padded ones included,
      as the official code did (pooled features then depend on the
      batch). For measurement only.
    bank_posemb: learned position embeddings on a sequence bank's entries
      (off for parity, which is permutation invariant; on for pointer-value
      retrieval, whose pointers are positions).
  """

  tape: tape_lib.TapeConfig
  stem: str = "flatten"
  posemb: bool = False
  bank_patch_size: int = 8
  pool_include_padded_tape: bool = False
  bank_posemb: bool = False

  def __post_init__(self):
    super().__post_init__()
    self.tape.check_layers(self.encoder.depth)
    if self.tape.bank == "input" and self.stem == "patches":
      run_config.check(
          self.input_shape[0] % self.bank_patch_size == 0,
          f"model.bank_patch_size={self.bank_patch_size} must divide the "
          f"image size {self.input_shape[:2]}",
      )
    entries = banks.bank_entries(
        self.tape.bank,
        stem=self.stem,
        input_shape=self.input_shape,
        bank_size=self.tape.bank_size,
        bank_patch_size=self.bank_patch_size,
    )
    what = (
        "tape.bank_size"
        if self.tape.bank == "learn"
        else "one entry per input element"
        if self.stem != "patches"
        else "model.bank_patch_size patches"
    )
    self.tape.check_bank(entries, self.encoder.width, what)


class Model(nn.Module):
  """AdaTape classifier; returns a ModelOutput."""

  config: Config

  @nn.compact
  def __call__(self, inputs: jax.Array, *, train: bool) -> outputs.ModelOutput:
    cfg = self.config
    enc = cfg.encoder
    x = cfg.make_stem()(inputs, train=train)
    bank = banks.create(
        cfg.tape.bank,
        stem=cfg.stem,
        width=enc.width,
        bank_size=cfg.tape.bank_size,
        bank_patch_size=cfg.bank_patch_size,
        posemb=cfg.bank_posemb,
    )(inputs)
    num_main = x.shape[1]
    mask_BxL = jnp.ones(x.shape[:2], bool)
    tape_masks, lengths, losses = [], [], []
    reads_BxM = jnp.zeros((x.shape[0], bank.shape[-2]), jnp.float32)
    flops_B = jnp.zeros(x.shape[:1], jnp.float32)
    for i in range(enc.depth):
      if i in cfg.tape.layers:
        readout = tape_lib.TapeAppender(cfg.tape, name=f"tape_{i}")(
            x, mask_BxL, bank, train=train
        )
        flops_B += _reader_flops(cfg, bank.shape[-2], readout.length_B)
        reads_BxM += _bank_reads(readout, bank.shape[-2])
        x = jnp.concatenate([x, readout.tokens_BxTxD], axis=1)
        mask_BxL = jnp.concatenate([mask_BxL, readout.mask_BxT], axis=1)
        tape_masks.append(readout.mask_BxT)
        lengths.append(readout.length_B)
        losses.append(readout.loss_B)
      flops_B += _block_flops(cfg, num_main, mask_BxL)
      x = encoder.EncoderBlock(
          enc,
          tape_mlp_dim=cfg.tape.encoder_mlp_dim,
          tape_dropout=cfg.tape.dropout,
          name=f"encoderblock_{i}",
      )(x, mask_BxL, num_main=num_main, train=train)
    pool_mask = (
        jnp.ones_like(mask_BxL) if cfg.pool_include_padded_tape else mask_BxL
    )
    logits = cfg.classify(x, pool_mask)
    atr_loss_B = sum(losses)
    return outputs.ModelOutput(
        logits=logits,
        aux_loss_B=cfg.tape.loss_weight * atr_loss_B,
        flops_B=flops_B,
        metrics_B={"tape_length": sum(lengths), "atr_loss": atr_loss_B},
        tape_mask_BxT=jnp.concatenate(tape_masks, axis=1),
        bank_reads_BxM=reads_BxM,
    )


def _bank_reads(readout: tape_lib.TapeReadout, entries: int) -> jax.Array:
  """Per example, how often each bank entry went into a valid tape token.

  A reading step is valid when the first of the tape slots it fills is
  (each step fills T / S slots; the fixed reader is one step of T).
  """
  batch, steps, _ = readout.indices_BxSxK.shape
  valid_BxS = readout.mask_BxT.reshape(batch, steps, -1)[:, :, 0]
  counts_BxSxKxM = jax.nn.one_hot(readout.indices_BxSxK, entries)
  return jnp.einsum(
      "bskm,bs->bm", counts_BxSxKxM, valid_BxS.astype(jnp.float32)
  )


def _reader_flops(
    cfg: Config, bank_entries: int, length_B: jax.Array
) -> jax.Array:
  """Scoring the bank once per reading step, plus the tape MLP."""
  tape = cfg.tape
  width = cfg.encoder.width
  steps_B = jnp.ceil(length_B.astype(jnp.float32) / tape.tokens_per_step)
  total = flops.dense(width, bank_entries, steps_B)
  if tape.mlp_dim:
    total += flops.glu_mlp(width, tape.mlp_dim, length_B)
  return total


def _block_flops(cfg: Config, num_main: int, mask_BxL: jax.Array) -> jax.Array:
  """One block over the main tokens and each example's valid tape tokens."""
  enc = cfg.encoder
  tokens_B = mask_BxL.sum(1).astype(jnp.float32)
  tape_B = tokens_B - num_main
  total = flops.attention(enc.width, tokens_B, tokens_B)
  total += flops.mlp(enc.width, enc.mlp_dim, num_main)
  if cfg.tape.encoder_mlp_dim:
    return total + flops.glu_mlp(enc.width, cfg.tape.encoder_mlp_dim, tape_B)
  return total + flops.mlp(enc.width, enc.mlp_dim, tape_B)
