r"""Image-model throughput: images/s, compile time, static and effective FLOPs.

For each model (a config, or a finished run's config and parameters), on
one jax device (the first; per-device numbers), prints:
  train img/s   global batch / median train-step time (forward, backward,
                optimizer; interleaved rounds, so drift hits all alike)
  infer img/s   the same for the eval forward pass
  compile s     train step and forward, lowering plus XLA compilation
  static GF     XLA's cost analysis of the compiled forward, per image:
                what the device executes, every tape slot included
  effective GF  static minus the analytic cost (adatape/models/flops.py) of
                the tape slots left unread at the measured mean tape length
  tape          that mean tape length (over the timed batch)
and for an AdaTape / ViT pair, the step-time ratio next to the static
train-FLOP ratio (issue 3's bar: time ratio <= FLOP ratio + 0.05).

  python -m experiments.throughput                      # S/16 pair, 224 px
  python -m experiments.throughput --batch=64 --spec=configs/imagenet/adatape.py:variant=B/16
  python -m experiments.throughput --workdir=RUN        # a trained run

Random-init parameters read a near-maximal tape; a trained run's mean
tape length is what its eval measured (results.json, eval/tape_length).
"""

import argparse
import functools
import json
import statistics
import sys
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from adatape import analysis
from adatape import checkpointing
from adatape import models
from adatape import optim
from adatape import run_config
from adatape import train

DEFAULT_SPECS = (
    "configs/imagenet/vit.py:variant=S/16",
    "configs/imagenet/adatape.py:variant=S/16,bank=input",
)


def head_classes(params: Any) -> int:
  """The class count of a classifier's parameters (its head's outputs)."""
  return int(params["head"]["output_projection"]["kernel"].shape[-1])


def _cost_gflops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan"))) / 1e9


def _timer(fn, *args):
  """A zero-argument callable timing one call of `fn(*args)`."""

  def once() -> float:
    begin = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - begin

  return once


class ForwardCost(NamedTuple):
  forward: Any  # The compiled eval forward: (params, images) -> outputs.
  compile_s: float
  static_gflops: float  # XLA's count per image.
  tape_length: float | None  # Mean over `images` (None: no tape).
  full_tape_gflops: float  # Analytic, per image, every tape slot read.
  unread_gflops: float  # Analytic, per image, of the slots left unread.


def forward_cost(
    config: ml_collections.ConfigDict,
    params: Any,
    images: jax.Array,
    num_classes: int,
) -> ForwardCost:
  """Compiles a model's eval forward and counts its FLOPs per image."""
  input_shape = tuple(images.shape[1:])

  def forward_of(cfg):
    model = models.build(cfg, input_shape=input_shape, num_classes=num_classes)

    def forward(params, x):
      out = model.apply(
          {"params": params},
          x,
          train=False,
          rngs={"halting": jax.random.key(0)},
      )
      return out.logits, out.metrics_B.get("tape_length"), out.flops_B

    return jax.jit(forward)

  start = time.perf_counter()
  compiled = forward_of(config).lower(params, images).compile()
  compile_s = time.perf_counter() - start
  static = _cost_gflops(compiled) / len(images)
  _, tape_B, flops_B = compiled(params, images)
  if tape_B is None:
    return ForwardCost(compiled, compile_s, static, None, 0.0, 0.0)
  # The fixed reader reads every slot; the analytic count depends on the
  # tape lengths only, so it is the full-tape count of this model.
  fixed = ml_collections.ConfigDict(config.to_dict())
  fixed.tape.adaptive = False
  _, _, full_B = forward_of(fixed)(params, images[:1])
  full = float(full_B[0]) / 1e9
  return ForwardCost(
      compiled,
      compile_s,
      static,
      float(np.mean(tape_B)),
      full,
      full - float(np.mean(flops_B)) / 1e9,
  )


class Bench:
  """One model's compiled train step and forward on a fixed batch."""

  def __init__(
      self,
      label: str,
      config: ml_collections.ConfigDict,
      params,
      batch: int,
      num_classes: int,
  ):
    self.label = label
    self.config = config
    size = config.data.image_size
    input_shape = (size, size, 3)
    model = models.build(
        config, input_shape=input_shape, num_classes=num_classes
    )
    opt = run_config.to_dataclass(optim.Config, config.optim, "optim")
    tx = optim.create(opt, config.total_steps)
    state = train.init_state(
        jax.random.key(0), model=model, tx=tx, input_shape=input_shape
    )
    if params is not None:
      state = state.replace(params=params, opt_state=tx.init(params))
    rng = np.random.default_rng(0)
    images = jnp.asarray(
        rng.uniform(-1, 1, (batch,) + input_shape), jnp.float32
    )
    labels = jnp.asarray(rng.integers(0, num_classes, batch))
    step = jax.jit(
        functools.partial(
            train.train_step,
            model=model,
            tx=tx,
            lr_fn=optim.schedule(opt, config.total_steps),
            loss=config.loss,
        )
    )

    start = time.perf_counter()
    step_compiled = step.lower(
        state, {"inputs": images, "label": labels}
    ).compile()
    self.train_compile_s = time.perf_counter() - start
    self.train_gflops = _cost_gflops(step_compiled) / batch
    cost = forward_cost(config, state.params, images, num_classes)
    self.infer_compile_s = cost.compile_s
    self.static_gflops = cost.static_gflops
    self.tape = cost.tape_length
    self.effective_gflops = cost.static_gflops - cost.unread_gflops
    # The train step is timed on a fixed state (no donation): every call
    # does the same work, and the state stays valid.
    self.train_once = _timer(
        step_compiled, state, {"inputs": images, "label": labels}
    )
    self.infer_once = _timer(cost.forward, state.params, images)
    self.batch = batch


def run(benches: list[Bench], repeats: int) -> dict[str, dict[str, float]]:
  """Times all models in interleaved rounds; prints and returns the rows."""
  samples = {b.label: {"train": [], "infer": []} for b in benches}
  for b in benches:  # Warm-up.
    b.train_once()
    b.infer_once()
  for _ in range(repeats):
    for b in benches:
      samples[b.label]["train"].append(b.train_once())
      samples[b.label]["infer"].append(b.infer_once())
  device = jax.devices()[0]
  print(
      f"\ndevice: {device.device_kind} ({device.platform}); batch "
      f"{benches[0].batch}; median of {repeats}"
  )
  print(
      f"{'model':<46}{'train img/s':>12}{'infer img/s':>12}"
      f"{'compile s':>14}{'static GF':>10}{'eff. GF':>9}{'tape':>6}"
  )
  rows = {}
  for b in benches:
    train_s = statistics.median(samples[b.label]["train"])
    infer_s = statistics.median(samples[b.label]["infer"])
    rows[b.label] = dict(
        train_step_s=train_s,
        infer_step_s=infer_s,
        train_images_per_s=b.batch / train_s,
        infer_images_per_s=b.batch / infer_s,
        train_compile_s=b.train_compile_s,
        infer_compile_s=b.infer_compile_s,
        static_gflops=b.static_gflops,
        train_gflops=b.train_gflops,
        effective_gflops=b.effective_gflops,
        tape_length=b.tape,
    )
    tape = f"{b.tape:.2f}" if b.tape is not None else "-"
    print(
        f"{b.label:<46}{b.batch / train_s:>12.2f}{b.batch / infer_s:>12.2f}"
        f"{b.train_compile_s:>7.1f}+{b.infer_compile_s:<6.1f}"
        f"{b.static_gflops:>10.3g}{b.effective_gflops:>9.3g}{tape:>6}"
    )
  return rows


def compare(benches: list[Bench], rows) -> None:
  """The step-time vs static-FLOP ratio of each AdaTape to the first ViT."""
  vits = [b for b in benches if b.config.model.name == "transformer"]
  if not vits:
    return
  base = vits[0]
  for b in benches:
    if b.config.model.name != "adatape":
      continue
    time_ratio = (
        rows[b.label]["train_step_s"] / rows[base.label]["train_step_s"]
    )
    flop_ratio = b.train_gflops / base.train_gflops
    verdict = "meets" if time_ratio <= flop_ratio + 0.05 else "misses"
    print(
        f"{b.label} / {base.label}: train step time ratio "
        f"{time_ratio:.3f}, static train-FLOP ratio {flop_ratio:.3f} "
        f"(XLA: {b.train_gflops:.2f} / {base.train_gflops:.2f} GF per "
        f"image); {verdict} the bar time <= FLOPs + 0.05"
    )


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
      "--spec",
      action="append",
      default=[],
      help="PATH[:ARGS] of a config file (repeatable)",
  )
  parser.add_argument(
      "--workdir",
      action="append",
      default=[],
      help="a run: its config and latest parameters",
  )
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument(
      "--num_classes",
      type=int,
      default=1000,
      help="for --spec models (a run's head says its own)",
  )
  parser.add_argument("--out", default="", help="also write the rows as JSON")
  args = parser.parse_args()
  try:
    loaded = [
        (spec, run_config.load(spec, f"--spec={spec}"), None)
        for spec in args.spec or ([] if args.workdir else DEFAULT_SPECS)
    ]
    loaded += [(w, *analysis.read_run(w)[::2]) for w in args.workdir]
    benches = [
        Bench(
            label.rstrip("/").split("/")[-1]
            if label in args.workdir
            else label.replace("configs/", ""),
            config,
            params,
            args.batch,
            args.num_classes if params is None else head_classes(params),
        )
        for label, config, params in loaded
    ]
  except (run_config.ConfigError, checkpointing.CheckpointError) as e:
    sys.exit(f"error: {e}")
  print(f"jax {jax.__version__}; compile s = train step + forward")
  rows = run(benches, args.repeats)
  compare(benches, rows)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(
          {
              "device": jax.devices()[0].device_kind,
              "devices": jax.device_count(),
              "batch": args.batch,
              "repeats": args.repeats,
              "rows": rows,
          },
          f,
          indent=1,
      )


if __name__ == "__main__":
  main()
