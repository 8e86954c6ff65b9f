"""AdaTape: a Transformer whose input is extended by an adaptively read tape.

One model for every task: the stem decides what the main tokens are (a
single flattened token for parity, image patches for ViT), the bank decides
what the tape is read from, and `tape.layers` decides before which blocks a
tape is appended. Each appended tape adds T slots; its mask marks the slots
each example actually read, and the encoder's key-padding masks and masked
pooling make the others invisible.
"""

import dataclasses
from typing import NamedTuple

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
    bank_posemb: learned position embeddings on a sequence bank's entries
      (off for parity, which is permutation invariant; on for pointer-value
      retrieval, whose pointers are positions).
  """

  tape: tape_lib.TapeConfig
  stem: str = "flatten"
  posemb: bool = False
  bank_patch_size: int = 8
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
    entries = bank_entries(self)
    what = (
        "tape.bank_size"
        if self.tape.bank == "learn"
        else "one entry per input element"
        if self.stem != "patches"
        else "model.bank_patch_size patches"
    )
    self.tape.check_bank(entries, self.encoder.width, what)


class Stream(NamedTuple):
  """The encoder's state between blocks, as one model call carries it.

  Attributes:
    x_BxLxD: the residual stream: main tokens, then the tapes appended.
    mask_BxL: which positions are real (main tokens, tape slots read).
    num_main: N, the number of main tokens.
    bank: the bank tapes are read from.
    flops_B: analytic FLOPs so far.
    lengths: tape lengths `[B]`, one per tape appended.
    losses: ATR losses `[B]`, one per tape.
    tape_masks: `[B, T]` masks, one per tape.
    reads_BxM: bank reads so far (heatmaps).
  """

  x_BxLxD: jax.Array
  mask_BxL: jax.Array
  num_main: int
  bank: jax.Array
  flops_B: jax.Array
  lengths: tuple[jax.Array, ...] = ()
  losses: tuple[jax.Array, ...] = ()
  tape_masks: tuple[jax.Array, ...] = ()
  reads_BxM: jax.Array | None = None


def embed(cfg: Config, inputs: jax.Array, *, train: bool) -> Stream:
  """The stem and the bank. Creates submodules `stem` and `bank`: call
  inside a compact `__call__` (the model's, or an elastic stage's)."""
  enc = cfg.encoder
  x = cfg.make_stem()(inputs, train=train)
  bank = banks.create(
      cfg.tape.bank,
      stem=cfg.stem,
      width=enc.width,
      bank_size=cfg.tape.bank_size,
      bank_patch_size=cfg.bank_patch_size,
      posemb=cfg.bank_posemb,
      dtype=enc.compute_dtype,
  )(inputs)
  return Stream(
      x_BxLxD=x,
      mask_BxL=jnp.ones(x.shape[:2], bool),
      num_main=x.shape[1],
      bank=bank,
      flops_B=jnp.full(x.shape[:1], bank_flops(cfg, bank.shape[-2])),
      reads_BxM=jnp.zeros((x.shape[0], bank.shape[-2]), jnp.float32),
  )


def append_tape(cfg: Config, s: Stream, layer: int, *, train: bool) -> Stream:
  """Reads the tape of `layer` (submodule `tape_{layer}`) and appends it."""
  entries = s.bank.shape[-2]
  readout = tape_lib.TapeAppender(cfg.tape, name=f"tape_{layer}")(
      s.x_BxLxD, s.mask_BxL, s.bank, train=train
  )
  return s._replace(
      x_BxLxD=jnp.concatenate([s.x_BxLxD, readout.tokens_BxTxD], axis=1),
      mask_BxL=jnp.concatenate([s.mask_BxL, readout.mask_BxT], axis=1),
      flops_B=s.flops_B + _reader_flops(cfg, entries, readout.length_B),
      lengths=s.lengths + (readout.length_B,),
      losses=s.losses + (readout.loss_B,),
      tape_masks=s.tape_masks + (readout.mask_BxT,),
      reads_BxM=s.reads_BxM + _bank_reads(readout, entries),
  )


def run_blocks(
    cfg: Config,
    s: Stream,
    first: int,
    last: int,
    *,
    train: bool,
    read_first_tape: bool = True,
) -> Stream:
  """Blocks first..last-1 (submodules `encoderblock_{i}`), appending a tape
  before each block named in `tape.layers` (but not before block `first`
  when `read_first_tape` is False: it was appended already)."""
  enc = cfg.encoder
  for i in range(first, last):
    if i in cfg.tape.layers and (read_first_tape or i != first):
      s = append_tape(cfg, s, i, train=train)
    flops_B = s.flops_B + _block_flops(cfg, s.num_main, s.mask_BxL)
    x = encoder.EncoderBlock(
        enc,
        tape_mlp_dim=cfg.tape.encoder_mlp_dim,
        tape_dropout=cfg.tape.dropout,
        # Main tokens, then at most one tape whose read slots come first
        # (`TapeReadout.mask_BxT`): each row's valid keys are a prefix.
        keys_are_prefix=len(s.tape_masks) <= 1,
        name=f"encoderblock_{i}",
    )(s.x_BxLxD, s.mask_BxL, num_main=s.num_main, train=train)
    s = s._replace(x_BxLxD=x, flops_B=flops_B)
  return s


def logits_of(cfg: Config, s: Stream) -> jax.Array:
  """Final LayerNorm, pooling over the real positions (unread tape slots
  left out, so an example's logits do not depend on its batch), head."""
  return cfg.classify(s.x_BxLxD, s.mask_BxL)


class Model(nn.Module):
  """AdaTape classifier; returns a ModelOutput."""

  config: Config

  @nn.compact
  def __call__(self, inputs: jax.Array, *, train: bool) -> outputs.ModelOutput:
    cfg = self.config
    s = embed(cfg, inputs, train=train)
    s = run_blocks(cfg, s, 0, cfg.encoder.depth, train=train)
    atr_loss_B = sum(s.losses)
    return outputs.ModelOutput(
        logits=logits_of(cfg, s),
        aux_loss_B=cfg.tape.loss_weight * atr_loss_B,
        flops_B=s.flops_B,
        metrics_B={"tape_length": sum(s.lengths), "atr_loss": atr_loss_B},
        tape_mask_BxT=jnp.concatenate(s.tape_masks, axis=1),
        bank_reads_BxM=s.reads_BxM,
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
  """One read of a tape: per reading step, scoring the bank at the key
  width D / key_split and merging the K candidates (values, and keys for
  the query update); the tape MLP per token read."""
  tape = cfg.tape
  width = cfg.encoder.width
  key_width = width // tape.key_split
  steps_B = jnp.ceil(length_B.astype(jnp.float32) / tape.tokens_per_step)
  candidates = tape.num_candidates if tape.adaptive else tape.num_tokens
  total = flops.dense(key_width, bank_entries, steps_B)
  total += flops.dense(candidates, width + key_width, steps_B)
  if tape.mlp_dim:
    total += flops.glu_mlp(width, tape.mlp_dim, length_B)
  return total


def bank_flops(cfg: Config, bank_entries: int) -> float:
  """Building the bank, once per example: an input-driven image bank is a
  patch convolution and a Dense layer over its M entries (at S/16 with
  patch-8 entries, as much as the rest of the tape's added cost), a
  sequence bank one Dense per element; a learnable bank is a parameter
  and costs nothing."""
  width = cfg.encoder.width
  if cfg.tape.bank == "learn":
    return 0.0
  if cfg.stem == "patches":
    channels = cfg.input_shape[-1]
    return float(
        flops.patch_embedding(
            cfg.bank_patch_size, channels, width, bank_entries
        )
        + flops.dense(width, width, bank_entries)
    )
  return float(flops.dense(cfg.input_shape[-1], width, bank_entries))


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


def bank_entries(cfg: Config) -> int:
  """M, the number of entries of the model's bank."""
  return banks.bank_entries(
      cfg.tape.bank,
      stem=cfg.stem,
      input_shape=cfg.input_shape,
      bank_size=cfg.tape.bank_size,
      bank_patch_size=cfg.bank_patch_size,
  )


def computed_flops(
    cfg: Config,
    num_main: int,
    bank_entries: int,
    *,
    read: int | None = None,
    slots: int | None = None,
) -> float:
  """Analytic FLOPs per example of what an execution computes: reading
  `read` tape tokens (default T: every reading step) and running the
  blocks after each tape over N + `slots` tokens (default T: padded
  execution, every slot). Elastic execution reads the example's length
  and keeps its bucket's slots; `flops_B` counts only the tokens read, the
  bound no execution beats."""
  read = cfg.tape.num_tokens if read is None else read
  slots = cfg.tape.num_tokens if slots is None else slots
  total = bank_flops(cfg, bank_entries)
  tokens = num_main
  for i in range(cfg.encoder.depth):
    if i in cfg.tape.layers:
      total += float(_reader_flops(cfg, bank_entries, jnp.float32(read)))
      tokens += slots
    mask = jnp.ones((1, tokens), bool)
    total += float(_block_flops(cfg, num_main, mask)[0])
  return total
