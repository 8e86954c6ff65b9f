"""Stems: raw input -> the main token sequence `[B, N, D]` the encoder sees.

  sequence  one token per element (Dense), optional learned positions;
            the standard Transformer on sequence tasks.
  flatten   the whole sequence as a single token (Dense of the flattened
            input); AdaTape's parity stem (the official `AdaTapeParity`),
            which must read the
            elements through the tape.
  patches   ViT patch embedding (a stride-P conv, computed as a matmul of
            the patches: `layers.PatchEmbed`) plus learned positions.

A zero-initialised CLS token is prepended for the `token` classifier.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from adatape import layers
from adatape import run_config
from adatape.models import encoder
from adatape.models import flops

STEMS = ("sequence", "flatten", "patches")


class Stem(nn.Module):
  """Embeds the raw input into main tokens, in `dtype` (parameters stay
  float32)."""

  kind: str
  width: int
  patch_size: int = 16
  posemb: bool = True
  cls_token: bool = False
  dropout: float = 0.0
  dtype: Any = None

  @nn.compact
  def __call__(self, inputs: jax.Array, *, train: bool) -> jax.Array:
    x = self._embed(inputs)
    if self.cls_token:
      cls = self.param("cls", nn.initializers.zeros, (1, 1, self.width))
      cls = cls.astype(x.dtype)
      x = jnp.concatenate(
          [jnp.broadcast_to(cls, (x.shape[0], 1, self.width)), x], axis=1
      )
    return nn.Dropout(self.dropout)(x, deterministic=not train)

  def _embed(self, inputs: jax.Array) -> jax.Array:
    batch = inputs.shape[0]
    if self.kind == "flatten":
      return nn.Dense(self.width, dtype=self.dtype, name="embedding")(
          inputs.reshape(batch, 1, -1)
      )
    if self.kind == "sequence":
      x = layers.per_element(
          nn.Dense(self.width, dtype=self.dtype, name="embedding"), inputs
      )
    else:
      p = self.patch_size
      x = layers.PatchEmbed(self.width, p, dtype=self.dtype, name="embedding")(
          inputs
      )
      x = x.reshape(batch, -1, self.width)
    if self.posemb:
      posemb = self.param(
          "posembed_input", nn.initializers.normal(0.02), (1,) + x.shape[1:]
      )
      x = x + posemb.astype(x.dtype)
    return x


def check_input(
    kind: str, input_shape: tuple[int, ...], patch_size: int
) -> None:
  """Rejects an input shape the stem cannot embed."""
  run_config.check_choice("model.stem", kind, STEMS)
  if kind == "patches":
    run_config.check(
        len(input_shape) == 3
        and input_shape[0] % patch_size == 0
        and input_shape[1] % patch_size == 0,
        f"model.patch_size={patch_size} must divide the image size "
        f"{input_shape[:2]} (model.stem='patches' needs [H, W, C] inputs)",
    )
  else:
    run_config.check(
        len(input_shape) == 2,
        f"model.stem={kind!r} needs [length, channels] inputs, got "
        f"{input_shape}",
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClassifierConfig:
  """The fields every classifier model has: size, data, stem and head.

  Model configs subclass this and add their own fields (the `model.*` keys).

  Attributes:
    encoder: encoder size.
    num_classes: classifier outputs (from the data).
    input_shape: shape of one example (from the data).
    stem: "sequence", "flatten" or "patches".
    classifier: "gap" (masked mean over valid tokens) or "token".
    patch_size: patch size for the patches stem.
    posemb: learned position embeddings for the main tokens.
    head_bias_init: initial classifier bias (-6.9 in the official ImageNet
      config, for sigmoid cross-entropy over 1000 classes).
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
    check_input(self.stem, self.input_shape, self.patch_size)
    run_config.check_choice(
        "model.classifier", self.classifier, ("gap", "token")
    )

  def main_tokens(self) -> int:
    """N, the number of tokens the stem gives (a CLS token included)."""
    if self.stem == "flatten":
      count = 1
    elif self.stem == "sequence":
      count = self.input_shape[0]
    else:
      h, w = self.input_shape[:2]
      count = (h // self.patch_size) * (w // self.patch_size)
    return count + (self.classifier == "token")

  def stem_head_flops(self) -> float:
    """Analytic FLOPs per example of the stem and the head, which the
    models' `flops_B` leave out (every method on a task shares them)."""
    d = self.encoder.width
    if self.stem == "flatten":
      length = 1
      stem = flops.dense(int(np.prod(self.input_shape)), d, 1)
    elif self.stem == "sequence":
      length = self.input_shape[0]
      stem = flops.dense(self.input_shape[-1], d, length)
    else:
      h, w, c = self.input_shape
      length = (h // self.patch_size) * (w // self.patch_size)
      stem = flops.patch_embedding(self.patch_size, c, d, length)
    return float(stem + flops.dense(d, self.num_classes, 1))

  @property
  def image_grid(self) -> bool:
    """Whether position embeddings lie on a square patch grid, which a
    fine-tune at another resolution resamples (`adatape/init_from.py`)."""
    return self.stem == "patches"

  def make_stem(self) -> Stem:
    """The stem module; call inside the model's compact `__call__`."""
    return Stem(
        self.stem,
        self.encoder.width,
        self.patch_size,
        self.posemb,
        cls_token=self.classifier == "token",
        dropout=self.encoder.dropout,
        dtype=self.encoder.compute_dtype,
        name="stem",
    )

  def classify(self, x_BxLxD: jax.Array, mask_BxL: jax.Array) -> jax.Array:
    """Final LayerNorm, pooling and head; call inside `__call__` too.

    The pooled mean and the head are float32 whatever the model's dtype.
    """
    x_BxLxD = nn.LayerNorm(
        dtype=self.encoder.compute_dtype, name="encoder_norm"
    )(x_BxLxD)
    return encoder.Head(self.num_classes, self.head_bias_init, name="head")(
        encoder.pool(x_BxLxD.astype(jnp.float32), mask_BxL, self.classifier)
    )
