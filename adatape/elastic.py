"""Elastic execution at inference: a short tape costs less wall-clock time.

Under jit every example carries all T tape slots, and a mask hides the
ones it did not read, so the adaptive length saves FLOPs only on paper.
`Predictor` runs an AdaTape model so that it saves time too, in one
compiled call per batch size (no host round trip):

1. The prefix (stem, bank, the blocks before the tape, and the tape read,
   whose loop stops once every example has halted) runs on the whole
   batch.
2. The examples are sorted by tape length and cut into chunks of `chunk`
   examples; each chunk takes the smallest bucket (a tape length, e.g.
   T/4, T/2, 3T/4, T) that holds its longest tape.
3. A loop over the chunks runs, per chunk, only the branch of its bucket
   (`lax.switch`): the blocks after the tape on sequences cut to N +
   bucket tokens. The results return in the original order.

Sorting puts equal lengths together, so only a chunk that straddles two
buckets runs some examples at a longer length than their own bucket. The
`bucket` of each example in the output is the length it ran with.

Cutting only removes tape slots an example did not read, which no real
token attends to and pooling skips, so each example's logits equal the
padded run's up to float reassociation (tests/test_elastic.py). It runs on
one device (the first), for models with one tape (`tape.layers` of one
block), the AdaTape default.
"""

import dataclasses
from typing import Any, NamedTuple, Sequence

from absl import logging
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


def schedule(
    lengths_B: jax.Array, buckets: Sequence[int], chunk: int
) -> tuple[jax.Array, jax.Array]:
  """The order that sorts the batch by tape length (padded to whole chunks
  by repeating the longest example), and each chunk's bucket index (the
  smallest bucket holding the chunk's longest tape)."""
  batch = lengths_B.shape[0]
  num_chunks = -(-batch // chunk)
  order = jnp.argsort(lengths_B, stable=True)
  order = jnp.concatenate(
      [order, jnp.full(num_chunks * chunk - batch, order[-1])]
  )
  longest = lengths_B[order].reshape(num_chunks, chunk).max(axis=1)
  bucket_index = jnp.searchsorted(jnp.asarray(buckets), longest, side="left")
  return order, bucket_index


@dataclasses.dataclass
class Predictor:
  """`Predictor(model, params)(inputs)`: AdaTape inference per bucket.

  Attributes:
    model: an AdaTape model (`models.build(...)` of `model.name=adatape`).
    params: its parameters.
    buckets: bucket tape lengths (default: T/4, T/2, 3T/4, T).
    chunk: examples per chunk: each chunk runs at one bucket length. Smaller
      chunks waste less at bucket boundaries; larger ones loop less.
  """

  model: Any
  params: Any
  buckets: Sequence[int] | None = None
  chunk: int = 128

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
    run_config.check(
        self.chunk >= 1, f"elastic chunk={self.chunk} must be >= 1"
    )
    self.buckets = parse_buckets(
        self.buckets or default_buckets(cfg.tape.num_tokens),
        cfg.tape.num_tokens,
    )
    # One device: the batch is split into chunks, not over a mesh.
    device = jax.devices()[0]
    if jax.device_count() > 1:
      logging.warning(
          "elastic execution runs on one device (%s) of %d; it does not "
          "shard the batch over a data-parallel mesh",
          device,
          jax.device_count(),
      )
    self._device = device
    self._params = jax.device_put(self.params, device)
    self._run = jax.jit(self._forward)

  def _forward(self, params, inputs):
    cfg = self.model.config
    variables = {"params": params}
    x_BxLxD, mask_BxL, length_B, flops_B = _Prefix(cfg).apply(variables, inputs)
    batch = x_BxLxD.shape[0]
    num_main = x_BxLxD.shape[1] - cfg.tape.num_tokens
    chunk = min(self.chunk, batch)
    order, bucket_index = schedule(length_B, self.buckets, chunk)
    num_chunks = bucket_index.shape[0]

    def chunks(a):
      return a[order].reshape((num_chunks, chunk) + a.shape[1:])

    suffix = _Suffix(cfg, num_main)

    def branch(bucket):
      keep = num_main + bucket

      def run(x, mask, flops):
        return suffix.apply(variables, x[:, :keep], mask[:, :keep], flops)

      return run

    branches = [branch(b) for b in self.buckets]
    logits, flops = jax.lax.map(
        lambda a: jax.lax.switch(a[0], branches, *a[1:]),
        (bucket_index, chunks(x_BxLxD), chunks(mask_BxL), chunks(flops_B)),
    )
    bucket = jnp.repeat(jnp.asarray(self.buckets)[bucket_index], chunk)
    # Back to the input order; the padding rows (copies) are dropped.
    order = order[:batch]

    def unsort(a):
      flat = a.reshape((num_chunks * chunk,) + a.shape[2:])[:batch]
      return jnp.zeros_like(flat).at[order].set(flat)

    return (
        unsort(logits),
        length_B,
        unsort(bucket.reshape(num_chunks, chunk)),
        unsort(flops),
    )

  def __call__(self, inputs: Any) -> ElasticOutput:
    inputs = jax.device_put(jnp.asarray(inputs), self._device)
    logits, lengths, bucket, flops = jax.device_get(
        self._run(self._params, inputs)
    )
    return ElasticOutput(
        logits=np.asarray(logits, np.float32),
        tape_length=np.asarray(lengths),
        bucket=np.asarray(bucket),
        flops=np.asarray(flops, np.float32),
    )
