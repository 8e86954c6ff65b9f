"""Elastic execution at inference: a short tape costs less wall-clock time.

Under jit every example carries all T tape slots, and a mask hides the
ones it did not read, so the adaptive length saves FLOPs only on paper.
`Predictor` runs an AdaTape model so that it saves time too:

1. The prefix (stem, bank, the blocks before the tape, and the tape read,
   whose loop stops once every example has halted) runs on the whole
   batch, as one compiled call.
2. The tape lengths come to the host, and each example goes to the
   smallest bucket (a tape length, e.g. T/4, T/2, 3T/4, T) that holds its
   tape.
3. The blocks after the tape run per bucket on sequences cut to N + bucket
   tokens, in pieces of fixed sizes (powers of two from `chunk` down to
   `smallest`, the last piece padded), so each (bucket, piece) shape
   compiles once; the results return in the original order.

Cutting only removes tape slots an example did not read, which no real
token attends to and pooling skips, so each example's logits equal the
padded run's up to float reassociation (tests/test_elastic.py). It runs on
one device (the first), for models with one tape (`tape.layers` of one
block), the AdaTape default.
"""

import dataclasses
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from adatape import run_config
from adatape.models import adatape


def default_buckets(num_tokens: int) -> tuple[int, ...]:
  """T/4, T/2, 3T/4 and T, rounded up."""
  return tuple(sorted({max(1, -(-num_tokens * q // 4)) for q in (1, 2, 3, 4)}))


def parse_buckets(
    spec: str | Sequence[int], num_tokens: int, what: str = "--buckets"
) -> tuple[int, ...]:
  """Bucket tape lengths from `2,4,6,8` (or a sequence); they must be
  integers in [1, T] and cover T (the longest tape must fit one)."""
  if isinstance(spec, str):
    items = [s.strip() for s in spec.split(",") if s.strip()]
    try:
      values = [int(s) for s in items]
    except ValueError:
      raise run_config.ConfigError(
          f"{what}={spec!r} must be comma-separated tape lengths, e.g. "
          f"{','.join(map(str, default_buckets(num_tokens)))}"
      ) from None
  else:
    values = [int(v) for v in spec]
  run_config.check(
      bool(values),
      f"{what} is empty; give tape lengths ending at T={num_tokens}, e.g. "
      f"{','.join(map(str, default_buckets(num_tokens)))}",
  )
  buckets = tuple(sorted(set(values)))
  run_config.check(
      buckets[0] >= 1 and buckets[-1] == num_tokens,
      f"{what}={','.join(map(str, values))} must be tape lengths in [1, "
      f"{num_tokens}] whose largest is T={num_tokens} (every tape must fit "
      "a bucket)",
  )
  return buckets


class _Prefix(nn.Module):
  """Everything up to and including the tape, on the whole batch."""

  config: adatape.Config

  @nn.compact
  def __call__(self, inputs: jax.Array):
    cfg = self.config
    layer = cfg.tape.layers[0]
    s = adatape.embed(cfg, inputs, train=False)
    s = adatape.run_blocks(cfg, s, 0, layer, train=False)
    s = adatape.append_tape(cfg, s, layer, train=False)
    return s.x_BxLxD, s.mask_BxL, s.lengths[0], s.flops_B


class _Suffix(nn.Module):
  """The blocks after the tape and the head, on a cut sequence."""

  config: adatape.Config
  num_main: int

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array, mask_BxL: jax.Array, flops_B):
    cfg = self.config
    layer = cfg.tape.layers[0]
    s = adatape.Stream(x_BxLxD, mask_BxL, self.num_main, None, flops_B)
    s = adatape.run_blocks(
        cfg, s, layer, cfg.encoder.depth, train=False, read_first_tape=False
    )
    return adatape.logits_of(cfg, s), s.flops_B


class ElasticOutput(NamedTuple):
  """Per example, in the input order."""

  logits: np.ndarray  # [B, C]
  tape_length: np.ndarray  # [B]
  bucket: np.ndarray  # [B]: the bucket length the example ran with.
  flops: np.ndarray  # [B]: analytic FLOPs (models/flops.py).


def _pieces(count: int, chunk: int, smallest: int) -> list[int]:
  """Piece sizes (powers of two in [smallest, chunk]) covering `count`
  rows; only the last may be larger than what is left (padding)."""
  sizes, size = [], chunk
  while size >= smallest:
    sizes.append(size)
    size //= 2
  pieces, left = [], count
  for size in sizes:
    while left >= size:
      pieces.append(size)
      left -= size
  if left:
    pieces.append(sizes[-1])
  return pieces


@dataclasses.dataclass
class Predictor:
  """`Predictor(model, params)(images)`: AdaTape inference per bucket.

  Attributes:
    model: an AdaTape model (`models.build(...)` of `model.name=adatape`).
    params: its parameters.
    buckets: bucket tape lengths (default: T/4, T/2, 3T/4, T).
    chunk: the largest piece of a bucket run at once (a power of two).
    smallest: the smallest piece (a power of two); remainders are padded
      up to it.
  """

  model: Any
  params: Any
  buckets: Sequence[int] | None = None
  chunk: int = 256
  smallest: int = 8

  def __post_init__(self):
    cfg = self.model.config
    run_config.check(
        isinstance(cfg, adatape.Config),
        "elastic execution needs an AdaTape model (model.name=adatape)",
    )
    run_config.check(
        len(cfg.tape.layers) == 1,
        f"elastic execution runs models with one tape; tape.layers="
        f"{cfg.tape.layers}",
    )
    run_config.check(
        cfg.tape.adaptive,
        "elastic execution needs the adaptive reader (tape.adaptive=True)",
    )
    for name in ("chunk", "smallest"):
      value = getattr(self, name)
      run_config.check(
          value >= 1 and value & (value - 1) == 0,
          f"elastic {name}={value} must be a power of two",
      )
    self.smallest = min(self.smallest, self.chunk)
    self.buckets = parse_buckets(
        self.buckets or default_buckets(cfg.tape.num_tokens),
        cfg.tape.num_tokens,
    )
    # One device: the batch is split by the host, not by a mesh.
    device = jax.devices()[0]
    self._params = jax.device_put(self.params, device)
    prefix = _Prefix(cfg)
    self._device = device
    self._prefix = jax.jit(lambda p, x: prefix.apply({"params": p}, x))
    self._suffixes = {}

  def _suffix(self, num_main: int):
    if num_main not in self._suffixes:
      suffix = _Suffix(self.model.config, num_main)
      self._suffixes[num_main] = jax.jit(
          lambda p, x, m, f: suffix.apply({"params": p}, x, m, f)
      )
    return self._suffixes[num_main]

  def __call__(self, inputs: Any) -> ElasticOutput:
    cfg = self.model.config
    inputs = jax.device_put(jnp.asarray(inputs), self._device)
    x_BxLxD, mask_BxL, length_B, flops_B = self._prefix(self._params, inputs)
    lengths = np.asarray(jax.device_get(length_B))
    num_main = x_BxLxD.shape[1] - cfg.tape.num_tokens
    batch = len(lengths)
    bucket_of = np.asarray(self.buckets)[
        np.searchsorted(np.asarray(self.buckets), lengths)
    ]
    suffix = self._suffix(num_main)
    logits = np.zeros((batch, cfg.num_classes), np.float32)
    flops = np.zeros(batch, np.float32)
    for bucket in self.buckets:
      rows = np.flatnonzero(bucket_of == bucket)
      start = 0
      for size in _pieces(len(rows), self.chunk, self.smallest):
        take = rows[start : start + size]
        start += len(take)
        # Pad a short last piece with copies of its first row.
        index = np.concatenate([take, np.full(size - len(take), take[0])])
        keep = num_main + bucket
        out, piece_flops = suffix(
            self._params,
            x_BxLxD[index, :keep],
            mask_BxL[index, :keep],
            flops_B[index],
        )
        logits[take] = np.asarray(out)[: len(take)]
        flops[take] = np.asarray(piece_flops)[: len(take)]
    return ElasticOutput(
        logits=logits,
        tape_length=lengths,
        bucket=bucket_of,
        flops=flops,
    )
