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

The default buckets are FLOP-proportional, but on a real device time does
not fall in step with tokens (on the 2-core CPU the digits model's blocks
after the tape, in chunks of 64, took 0.88-0.90 of their time at 24 tokens
with 17, for 0.71 of the tokens, in three processes:
experiments/results/elastic_inference_digits_eps1_b256.txt). With
`buckets="tuned"` the predictor times those blocks at every tape length
on its own device and keeps the lengths that run faster than every longer
one (`fastest_buckets`): each chunk then runs at the cheapest length that
holds it. With `group` it runs a large batch a group at a time, so that
a group's tapes are still in cache when its blocks read them.

Cutting only removes tape slots an example did not read, which no real
token attends to and pooling skips, so each example's logits equal the
padded run's up to float reassociation (tests/test_elastic.py). It runs
models with one tape (`tape.layers` of one block), the AdaTape default,
on every local device unless told fewer (`devices`): the batch is split
evenly, and each device sorts, buckets and runs its own share, with no
communication between them.

`HaltingPredictor` does the same for A-ViT's token halting, at every
layer: the examples are sorted by their number of running tokens and cut
into chunks; in each chunk every example's running tokens are gathered to
its front and the block runs on the smallest token budget (e.g. L/4, L/2,
3L/4, L) that holds the chunk's largest count, or not at all once every
token of the chunk has halted. Halted tokens are zero and
no running token attends to them, so the logits equal the padded run's
(tests/test_elastic.py).
"""

import dataclasses
import statistics
import time
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from adatape import run_config
from adatape.models import adatape
from adatape.models import avit
from adatape.models import encoder


def default_buckets(num_tokens: int) -> tuple[int, ...]:
  """T/4, T/2, 3T/4 and T, rounded up."""
  return tuple(sorted({max(1, -(-num_tokens * q // 4)) for q in (1, 2, 3, 4)}))


def parse_buckets(
    spec: str | Sequence[int],
    num_tokens: int,
    what: str = "--buckets",
    unit: str = "tape lengths",
    total: str = "T",
) -> tuple[int, ...]:
  """Bucket sizes from `2,4,6,8` (or a sequence): integers in [1, T] that
  cover T (the longest tape must fit one). A-ViT's token budgets pass
  `unit` and `total` (L, the token count) for their messages."""
  example = ",".join(map(str, default_buckets(num_tokens)))
  if isinstance(spec, str):
    items = [s.strip() for s in spec.split(",") if s.strip()]
    try:
      values = [int(s) for s in items]
    except ValueError:
      raise run_config.ConfigError(
          f"{what}={spec!r} must be comma-separated {unit}, e.g. {example}"
      ) from None
  else:
    values = [int(v) for v in spec]
  run_config.check(
      bool(values),
      f"{what} is empty; give {unit} ending at {total}={num_tokens}, e.g. "
      f"{example}",
  )
  buckets = tuple(sorted(set(values)))
  run_config.check(
      buckets[0] >= 1 and buckets[-1] == num_tokens,
      f"{what}={','.join(map(str, values))} must be {unit} in [1, "
      f"{num_tokens}] whose largest is {total}={num_tokens} (the longest "
      "must fit a bucket)",
  )
  return buckets


def interleaved(items: Iterable[Any], repeats: int) -> Iterator[Any]:
  """The items round after round, `repeats` rounds, so that drift hits all
  alike; every other round in reverse order, because on the 2-core CPU a
  step's place in the round moved its time by several percent whatever it
  ran (the same step timed 50.1 and 53.9 ms in two places of one round:
  experiments/results/per_element_dense_cpu.txt)."""
  items = list(items)
  for round_index in range(repeats):
    yield from items if round_index % 2 == 0 else items[::-1]


def median_times(
    runners: dict[Any, Callable[[], Any]], repeats: int
) -> dict[Any, float]:
  """Median seconds of each runner, after a warm-up call of each, timed in
  `interleaved` rounds."""
  for run_fn in runners.values():
    jax.block_until_ready(run_fn())
  times = {name: [] for name in runners}
  for name in interleaved(runners, repeats):
    begin = time.perf_counter()
    jax.block_until_ready(runners[name]())
    times[name].append(time.perf_counter() - begin)
  return {k: statistics.median(v) for k, v in times.items()}


def fastest_buckets(seconds: dict[int, float]) -> tuple[int, ...]:
  """From the time of the blocks after the tape at each tape length 1..T:
  the lengths that run faster than every longer one (T always). A chunk
  whose longest tape is L then takes the cheapest length >= L there is."""
  kept, best = [], float("inf")
  for length in sorted(seconds, reverse=True):
    if seconds[length] < best:
      kept.append(length)
      best = seconds[length]
  return tuple(sorted(kept))


# `buckets="tuned"` times the blocks after the tape on this many chunks.
TUNING_CHUNKS = 4


class Prefix(nn.Module):
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


def suffix_runners(
    model: Any, params: Any, chunk: int, batch: int
) -> dict[int, Callable[[], Any]]:
  """Per tape length 1..T, a call of the blocks after the tape (and the
  head) on `batch` examples, `chunk` at a time in one compiled loop as
  `Predictor` runs them, on one device: what each bucket costs there
  (`median_times` times them)."""
  cfg = model.config
  num_main, width = cfg.main_tokens(), cfg.encoder.width
  on = _Devices(1, chunk)
  params = on.put_params(params)
  num_chunks = -(-batch // chunk)

  def run(p, x, mask, flops):
    return jax.lax.map(
        lambda a: _Suffix(cfg, num_main).apply({"params": p}, *a),
        (x, mask, flops),
    )

  run = jax.jit(run)
  rng = np.random.default_rng(0)
  runners = {}
  for length in range(1, cfg.tape.num_tokens + 1):
    shape = (num_chunks, chunk, num_main + length)
    operands = jax.device_put(
        (
            rng.normal(size=shape + (width,)).astype(cfg.encoder.compute_dtype),
            np.ones(shape, bool),
            np.zeros(shape[:2], np.float32),
        ),
        on.devices[0],
    )
    runners[length] = lambda o=operands: run(params, *o)
  return runners


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


def switch_per_chunk(
    key_B: jax.Array,
    sizes: Sequence[int],
    chunk: int,
    branches: Sequence[Any],
    operands: tuple[jax.Array, ...],
) -> tuple[Any, jax.Array]:
  """`branches[i](*chunk_operands)` per chunk of the batch sorted by
  `key_B`, with i the smallest size holding the chunk's largest key
  (`schedule`). Returns the branch outputs per example, in the input order
  (the padding rows dropped), and the size each example ran with."""
  batch = key_B.shape[0]
  order, index_N = schedule(key_B, sizes, chunk)
  num_chunks = index_N.shape[0]
  outs = jax.lax.map(
      lambda a: jax.lax.switch(a[0], branches, *a[1]),
      (
          index_N,
          tuple(
              o[order].reshape((num_chunks, chunk) + o.shape[1:])
              for o in operands
          ),
      ),
  )
  size_NxC = jnp.repeat(jnp.asarray(sizes)[index_N][:, None], chunk, axis=1)
  order = order[:batch]

  def unsort(a):
    flat = a.reshape((num_chunks * chunk,) + a.shape[2:])[:batch]
    return jnp.zeros_like(flat).at[order].set(flat)

  return jax.tree.map(unsort, outs), unsort(size_NxC)


def fill_to_multiple(x: jax.Array, multiple: int) -> jax.Array:
  """`x` filled up to a multiple of `multiple` examples with copies of its
  last example (whose outputs the callers drop)."""
  missing = -x.shape[0] % multiple
  if not missing:
    return x
  return jnp.concatenate([x, jnp.repeat(x[-1:], missing, 0)])


def map_in_groups(fn: Callable[[jax.Array], Any], x: jax.Array, size: int):
  """`fn` on `size` examples of `x` at a time, in one compiled loop, the
  outputs concatenated: `x` is filled up to whole groups with copies of
  its last example, whose outputs are dropped. One group: `fn(x)`."""
  batch = x.shape[0]
  if size >= batch:
    return fn(x)
  num = -(-batch // size)
  x = fill_to_multiple(x, size)
  outs = jax.lax.map(fn, x.reshape((num, size) + x.shape[1:]))
  return jax.tree.map(
      lambda a: a.reshape((num * size,) + a.shape[2:])[:batch], outs
  )


def forward_in_chunks(model: nn.Module, chunk: int) -> Callable[..., Any]:
  """`f(params, x)`: the model's jitted inference logits (its padded
  execution, every tape slot), on `chunk` examples at a time in one
  compiled loop, as the predictors run their chunks. The baseline elastic
  execution is timed against: on a CPU a smaller batch can be faster per
  example by itself, which is not the tape's doing. Halting that samples
  gets the trainer's fixed eval key."""

  def logits(params, x):
    return model.apply(
        {"params": params},
        x,
        train=False,
        rngs={"halting": jax.random.key(0)},
    ).logits

  return jax.jit(lambda p, x: map_in_groups(lambda c: logits(p, c), x, chunk))


class _Devices:
  """Where a predictor runs: the first `count` local devices (0: every
  one), the batch split evenly over them. Each device sorts, buckets and
  runs its own share (`jax.shard_map`), so the shares never communicate
  and every device's chunks are as long as its own tapes need; a batch
  that does not divide is filled up with copies of its last example,
  whose outputs are dropped. Local devices only: in a job of several
  processes each runs its own inputs on its own devices."""

  def __init__(self, count: int, chunk: int):
    run_config.check(chunk >= 1, f"elastic chunk={chunk} must be >= 1")
    local = jax.local_devices()
    run_config.check(
        0 <= count <= len(local),
        f"elastic devices={count} must be 0 (every local device) or in "
        f"[1, {len(local)}]",
    )
    self.devices = tuple(local[: count or len(local)])
    self._mesh = jax.sharding.Mesh(np.asarray(self.devices), ("batch",))

  def compile(self, forward: Callable[..., Any]) -> Callable[..., Any]:
    """`forward(params, inputs)`, jitted, on each device's share."""
    if len(self.devices) > 1:
      forward = jax.shard_map(
          forward,
          mesh=self._mesh,
          in_specs=(P(), P("batch")),
          out_specs=P("batch"),
          # Off: the loops' carries (the reader's, the chunks') are not
          # annotated as varying per device; nothing crosses devices.
          check_vma=False,
      )
    return jax.jit(forward)

  def _sharding(self, spec: P) -> Any:
    if len(self.devices) == 1:
      return self.devices[0]
    return jax.sharding.NamedSharding(self._mesh, spec)

  def put_params(self, params: Any) -> Any:
    """`params` on every device (replicated)."""
    return jax.device_put(params, self._sharding(P()))

  def run(self, compiled: Callable[..., Any], params: Any, inputs: Any):
    """`compiled(params, inputs)` over the devices, fetched to the host."""
    batch = len(inputs)
    x = fill_to_multiple(jnp.asarray(inputs), len(self.devices))
    outs = compiled(params, jax.device_put(x, self._sharding(P("batch"))))
    return jax.tree.map(lambda a: np.asarray(a)[:batch], jax.device_get(outs))


@dataclasses.dataclass
class Predictor:
  """`Predictor(model, params)(inputs)`: AdaTape inference per bucket.

  Attributes:
    model: an AdaTape model (`models.build(...)` of `model.name=adatape`).
    params: its parameters.
    buckets: bucket tape lengths (default: T/4, T/2, 3T/4, T), or "tuned":
      measured on this device (`suffix_runners`, `fastest_buckets`), which
      takes a compile and `tune_repeats` timings per tape length.
    chunk: examples per chunk: each chunk runs at one bucket length. Smaller
      chunks waste less at bucket boundaries; larger ones loop less.
    group: examples per group (0: a device's whole share of the batch). A
      share larger than a group is run a group at a time (the last one
      filled up with copies of the last example), the prefix and then the
      sorted chunks of each group, so that a group's tapes are still in
      cache when its blocks after the tape read them; sorting sees only
      the group.
    tune_repeats: timing rounds when `buckets="tuned"`.
    devices: how many local devices the batch is split over (0: every
      one); each sorts, groups and buckets its own share. Timing it
      against the padded forward wants 1, the device that forward runs
      on.
    seconds: with "tuned", the measured time per tape length of the blocks
      after the tape on `TUNING_CHUNKS` chunks.
  """

  model: Any
  params: Any
  buckets: Sequence[int] | str | None = None
  chunk: int = 128
  group: int = 0
  tune_repeats: int = 7
  devices: int = 0
  seconds: dict[int, float] | None = dataclasses.field(default=None, init=False)

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
        self.group >= 0, f"elastic group={self.group} must be >= 0"
    )
    self._on = _Devices(self.devices, self.chunk)
    if self.buckets == "tuned":
      self.seconds = median_times(
          suffix_runners(
              self.model, self.params, self.chunk, TUNING_CHUNKS * self.chunk
          ),
          self.tune_repeats,
      )
      self.buckets = fastest_buckets(self.seconds)
    self.buckets = parse_buckets(
        self.buckets or default_buckets(cfg.tape.num_tokens),
        cfg.tape.num_tokens,
    )
    self._params = self._on.put_params(self.params)
    self._run = self._on.compile(self._forward)

  def _forward(self, params, inputs):
    return map_in_groups(
        lambda x: self._forward_group(params, x),
        inputs,
        self.group or inputs.shape[0],
    )

  def _forward_group(self, params, inputs):
    cfg = self.model.config
    variables = {"params": params}
    x_BxLxD, mask_BxL, length_B, flops_B = Prefix(cfg).apply(variables, inputs)
    num_main = x_BxLxD.shape[1] - cfg.tape.num_tokens
    suffix = _Suffix(cfg, num_main)

    def branch(bucket):
      keep = num_main + bucket

      def run(x, mask, flops):
        return suffix.apply(variables, x[:, :keep], mask[:, :keep], flops)

      return run

    (logits, flops), bucket = switch_per_chunk(
        length_B,
        self.buckets,
        min(self.chunk, x_BxLxD.shape[0]),
        [branch(b) for b in self.buckets],
        (x_BxLxD, mask_BxL, flops_B),
    )
    return logits, length_B, bucket, flops

  def __call__(self, inputs: Any) -> ElasticOutput:
    logits, lengths, bucket, flops = self._on.run(
        self._run, self._params, inputs
    )
    return ElasticOutput(
        logits=np.asarray(logits, np.float32),
        tape_length=np.asarray(lengths),
        bucket=np.asarray(bucket),
        flops=np.asarray(flops, np.float32),
    )


class HaltingOutput(NamedTuple):
  """Per example, in the input order."""

  logits: np.ndarray  # [B, C]
  layers_used: np.ndarray  # [B]: mean layers per token, as the model's.
  budget: np.ndarray  # [B, depth]: tokens each layer ran the example with.
  flops: np.ndarray  # [B]: analytic FLOPs of the running tokens.


class _Classify(nn.Module):
  """The model's final LayerNorm, pooling and head (same parameters)."""

  config: avit.Config

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array, mask_BxL: jax.Array) -> jax.Array:
    return self.config.classify(x_BxLxD, mask_BxL)


def compacted_block(
    run: Any,
    budgets: Sequence[int],
    x_BxLxD: jax.Array,
    active_BxL: jax.Array,
    chunk: int,
) -> tuple[jax.Array, jax.Array]:
  """`run(x_CxKxD, mask_CxK)` (a block) on the running tokens only.

  The examples are sorted by their number of running tokens and cut into
  chunks of `chunk`; in each, every example's running tokens are gathered,
  in order, to the front, and the block runs on the first k, the smallest
  of `budgets` holding the chunk's largest count (nothing at all when no
  token of the chunk runs). The outputs go back to their examples and
  positions; every other position is zero, as a halted token's is.
  Returns the block output [B, L, D] and each example's k [B].
  """
  sizes = (0,) + tuple(budgets)
  # Per example, its running tokens first (in order), then the halted.
  tokens_BxL = jnp.argsort(active_BxL <= 0, axis=1, stable=True)

  def branch(size):
    def compute(x_CxLxD, active_CxL, tokens_CxL):
      if size == 0:
        return jnp.zeros_like(x_CxLxD)
      keep_CxK = tokens_CxL[:, :size]
      y_CxKxD = run(
          jnp.take_along_axis(x_CxLxD, keep_CxK[..., None], axis=1),
          jnp.take_along_axis(active_CxL, keep_CxK, axis=1) > 0,
      )
      rows_Cx1 = jnp.arange(x_CxLxD.shape[0])[:, None]
      return jnp.zeros_like(x_CxLxD).at[rows_Cx1, keep_CxK].set(y_CxKxD)

    return compute

  return switch_per_chunk(
      jnp.sum(active_BxL > 0, axis=1),
      sizes,
      chunk,
      [branch(k) for k in sizes],
      (x_BxLxD, active_BxL, tokens_BxL),
  )


@dataclasses.dataclass
class HaltingPredictor:
  """`HaltingPredictor(model, params)(inputs)`: A-ViT inference on the
  tokens still running.

  Attributes:
    model: an A-ViT model (`models.build(...)` of `model.name=avit`).
    params: its parameters.
    budgets: token counts a layer may run with (default: L/4, L/2, 3L/4,
      L of the L stem tokens); the largest must be L.
    chunk: examples per chunk: at each layer the examples are sorted by
      their running tokens and each chunk runs at one budget. Smaller
      chunks waste less at budget boundaries; larger ones loop less.
    devices: how many local devices the batch is split over (0: every
      one); each sorts and compacts its own share.
  """

  model: Any
  params: Any
  budgets: Sequence[int] | None = None
  chunk: int = 128
  devices: int = 0

  def __post_init__(self):
    cfg = self.model.config
    run_config.check(
        isinstance(cfg, avit.Config),
        "halting elastic execution needs an A-ViT model (model.name=avit)",
    )
    tokens = cfg.main_tokens()
    self.budgets = parse_buckets(
        self.budgets or default_buckets(tokens),
        tokens,
        "--budgets",
        unit="token counts",
        total="L",
    )
    self._on = _Devices(self.devices, self.chunk)
    self._params = self._on.put_params(self.params)
    self._run = self._on.compile(self._forward)

  def _forward(self, params, inputs):
    cfg = self.model.config
    enc = cfg.encoder
    x = cfg.make_stem().apply({"params": params["stem"]}, inputs, train=False)
    valid_BxL = jnp.ones(x.shape[:2], bool)
    block = encoder.EncoderBlock(enc)
    budgets = []

    def run_block(layer, x_BxLxD, active_BxL):
      variables = {"params": params[f"encoderblock_{layer}"]}

      def run(x_CxKxD, mask_CxK):
        return block.apply(
            variables,
            x_CxKxD,
            mask_CxK,
            num_main=x_CxKxD.shape[1],
            train=False,
        )

      y, budget_B = compacted_block(
          run, self.budgets, x_BxLxD, active_BxL, min(self.chunk, len(x))
      )
      budgets.append(budget_B)
      return y

    halted = avit.halting_layers(cfg, x, valid_BxL, run_block)
    logits = _Classify(cfg).apply(
        {"params": params}, halted.out_BxLxD, valid_BxL
    )
    depth_B = halted.act.updates.mean(1)
    return logits, depth_B, jnp.stack(budgets, axis=1), halted.flops_B

  def __call__(self, inputs: Any) -> HaltingOutput:
    logits, depth, budget, flops = self._on.run(self._run, self._params, inputs)
    return HaltingOutput(
        logits=np.asarray(logits, np.float32),
        layers_used=np.asarray(depth, np.float32),
        budget=np.asarray(budget),
        flops=np.asarray(flops, np.float32),
    )
