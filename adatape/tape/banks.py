"""Tape banks: where tape tokens are read from.

Every bank is a Linen module called on the model's raw input and returning
either a shared bank `[M, D]` or a per-example bank `[B, M, D]`. The reader
handles both, so a new kind of bank is one more module here, not a fork of
the reader or the model. `bank_entries` says how many entries a bank will
have for a given input shape, so configs are validated before anything runs.
"""

from typing import Any

import flax.linen as nn
import jax

from adatape import layers


class LearnableBank(nn.Module):
  """M learnable vectors shared by all examples (`bank_type='learn'`)."""

  size: int
  width: int

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    del inputs  # The bank does not depend on the input.
    return self.param(
        "tape_tokens",
        nn.initializers.truncated_normal(stddev=0.02),
        (self.size, self.width),
    )


class SequenceBank(nn.Module):
  """One bank entry per input element: a Dense embedding (official parity).

  For parity the input is one-hot `[B, S, C]`, so the bank is `[B, S, D]`,
  without position embeddings (the task is permutation invariant). With
  `posemb`, a learned position embedding is added to each entry, for tasks
  where an element sits matters (pointer-value retrieval).
  """

  width: int
  posemb: bool = False
  dtype: Any = None

  @nn.compact
  def __call__(self, inputs_BxSxC: jax.Array) -> jax.Array:
    x = layers.per_element(
        nn.Dense(self.width, dtype=self.dtype, name="embed"), inputs_BxSxC
    )
    if self.posemb:
      posemb = self.param(
          "posembed_bank", nn.initializers.normal(0.02), (1,) + x.shape[1:]
      )
      x = x + posemb.astype(x.dtype)
    return x


class PatchBank(nn.Module):
  """Finer patches of the raw image (the official ImageNet input bank).

  A patch-`patch_size` convolution, its own learned position embedding and a
  Dense layer: `[B, H, W, 3]` -> `[B, (H/P)(W/P), D]`.
  """

  patch_size: int
  width: int
  dtype: Any = None

  @nn.compact
  def __call__(self, image_BxHxWxC: jax.Array) -> jax.Array:
    p = self.patch_size
    x = layers.PatchEmbed(
        self.width, p, dtype=self.dtype, name="embedding_bank"
    )(image_BxHxWxC)
    batch, h, w, d = x.shape
    x = x.reshape(batch, h * w, d)
    posemb = self.param(
        "posembed_input_bank",
        nn.initializers.normal(stddev=0.02),
        (1, h * w, d),
    )
    return nn.Dense(self.width, dtype=self.dtype, name="pre_bank")(
        x + posemb.astype(x.dtype)
    )


def create(
    bank: str,
    *,
    stem: str,
    width: int,
    bank_size: int,
    bank_patch_size: int,
    posemb: bool = False,
    dtype: Any = None,
) -> nn.Module:
  """The bank module for a tape config and a model stem; an input-driven
  bank computes in `dtype` (a learnable bank is its float32 parameter)."""
  if bank == "learn":
    return LearnableBank(size=bank_size, width=width, name="bank")
  if stem == "patches":
    return PatchBank(
        patch_size=bank_patch_size, width=width, dtype=dtype, name="bank"
    )
  return SequenceBank(width=width, posemb=posemb, dtype=dtype, name="bank")


def bank_entries(
    bank: str,
    *,
    stem: str,
    input_shape: tuple[int, ...],
    bank_size: int,
    bank_patch_size: int,
) -> int:
  """M, the number of entries `create(...)` yields for `input_shape`."""
  if bank == "learn":
    return bank_size
  if stem == "patches":
    h, w = input_shape[0], input_shape[1]
    return (h // bank_patch_size) * (w // bank_patch_size)
  return input_shape[0]
