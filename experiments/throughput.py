r"""Throughput of image models: images/s, compile time, FLOPs and MFU.

For each model (a config, or a finished run's config and parameters), on
one jax device (the first; per-device numbers), prints:
  train img/s   global batch / median train-step time (forward, backward,
                optimizer; interleaved rounds, so drift hits all alike)
  infer img/s   the same for the eval forward pass
  compile s     train step and forward, lowering plus XLA compilation
  static GF     XLA's cost analysis of the compiled forward, per image:
                what the device executes, every tape slot included (on a
                GPU it leaves out library GEMMs, so MFU does not use it)
  analytic GF   the model's own count (adatape/models/flops.py: encoder,
                stem, head, bank and reader) at the measured tape length
  tape          that mean tape length (over the timed batch)
  MFU           3 x analytic GF x train img/s over the matmul peak of the
                model's dtype, measured in the same run (an 8192^3 matmul
                on an accelerator, 2048^3 on a CPU)
and for each AdaTape against the first ViT, the train step-time ratio next
to the analytic train-FLOP ratio.

  python -m experiments.throughput                      # S/16 pair, 224 px
  python -m experiments.throughput --dtype=bfloat16 --attention=auto --batch=256
  python -m experiments.throughput --batch=64 --spec=configs/imagenet/adatape.py:variant=B/16
  python -m experiments.throughput --workdir=RUN        # a trained run
  python -m experiments.throughput --profile=/tmp/prof  # + each train step's
                                                        # XLA ops by time
  python -m experiments.throughput --vary=tape.scan_unroll=1,10  # one key's
                                        # values, timed in the same rounds
  python -m experiments.throughput --vary=xla_gpu_enable_cublaslt=false,true

`--out=FILE` also writes the printed report, the command first (default
with --save: experiments/results/throughput_<device>.txt). Random-init
parameters read a near-maximal tape; a trained run's mean tape length is
what its eval measured (results.json, eval/tape_length).
"""

import argparse
import copy
import functools
import json
import os
import re
import shlex
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
from adatape import elastic
from adatape import layers
from adatape import models
from adatape import optim
from adatape import profiling
from adatape import run_config
from adatape import storage
from adatape import train
from adatape.models import adatape as adatape_model
from adatape.models import flops

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


def matmul_peak_tflops(dtype: Any, rounds: int = 5) -> float:
  """The device's measured matmul rate in `dtype`: 8192^3 products on an
  accelerator (2048^3 on a CPU), 20 (2 on a CPU) issued back to back and
  waited for once, median of `rounds` such runs after one to warm up.

  Waiting for each product alone counted the dispatch and the idle device
  between calls: on the H200 that way read 532-618 TFLOP/s in three calls
  (experiments/results/throughput_nvidia_h200*.txt) where 20 products
  waited for once read 820 (../shared/docs/gpu.md).
  """
  n, calls = (2048, 2) if layers.platform() == "cpu" else (8192, 20)
  a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), dtype)
  f = jax.jit(lambda a: a @ a)

  def products() -> float:
    begin = time.perf_counter()
    jax.block_until_ready([f(a) for _ in range(calls)])
    return time.perf_counter() - begin

  products()
  seconds = statistics.median(products() for _ in range(rounds))
  return 2 * n**3 * calls / seconds / 1e12


class ForwardCost(NamedTuple):
  forward: Any  # The compiled eval forward: (params, images) -> outputs.
  compile_s: float
  static_gflops: float  # XLA's count per image.
  tape_length: float | None  # Mean over `images` (None: no tape).
  full_tape_gflops: float  # Analytic encoder count, every tape slot read.
  unread_gflops: float  # Analytic, per image, of the slots left unread.
  analytic_gflops: float  # Analytic whole-model count at the tape read.


def forward_cost(
    config: ml_collections.ConfigDict,
    params: Any,
    images: jax.Array,
    num_classes: int,
    compiler_options: dict[str, Any] | None = None,
) -> ForwardCost:
  """Compiles a model's eval forward (with XLA's `compiler_options`) and
  counts its FLOPs per image."""
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

    return jax.jit(forward, compiler_options=compiler_options)

  start = time.perf_counter()
  compiled = forward_of(config).lower(params, images).compile()
  compile_s = time.perf_counter() - start
  static = _cost_gflops(compiled) / len(images)
  _, tape_B, flops_B = compiled(params, images)
  model = models.build(config, input_shape=input_shape, num_classes=num_classes)
  analytic = (float(np.mean(flops_B)) + model.config.stem_head_flops()) / 1e9
  if tape_B is None:
    return ForwardCost(compiled, compile_s, static, None, 0.0, 0.0, analytic)
  # The analytic count of this model with every tape slot read.
  cfg = model.config
  full = (
      adatape_model.computed_flops(
          cfg, cfg.main_tokens(), adatape_model.bank_entries(cfg)
      )
      / 1e9
  )
  return ForwardCost(
      compiled,
      compile_s,
      static,
      float(np.mean(tape_B)),
      full,
      full - float(np.mean(flops_B)) / 1e9,
      analytic,
  )


class Bench:
  """One model's compiled train step and forward on a fixed batch (both
  with XLA's `compiler_options`, e.g. {"xla_gpu_enable_cublaslt": True}:
  what XLA_FLAGS sets for a whole process, set per program)."""

  def __init__(
      self,
      label: str,
      config: ml_collections.ConfigDict,
      params,
      batch: int,
      num_classes: int,
      compiler_options: dict[str, Any] | None = None,
  ):
    self.label = label
    self.config = config
    self.compiler_options = compiler_options
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
        ),
        compiler_options=compiler_options,
    )

    start = time.perf_counter()
    step_compiled = step.lower(
        state, {"inputs": images, "label": labels}
    ).compile()
    self.train_compile_s = time.perf_counter() - start
    self.train_gflops = _cost_gflops(step_compiled) / batch
    self._step_compiled = step_compiled
    cost = forward_cost(
        config, state.params, images, num_classes, compiler_options
    )
    self.infer_compile_s = cost.compile_s
    self.static_gflops = cost.static_gflops
    self.tape = cost.tape_length
    self.effective_gflops = cost.static_gflops - cost.unread_gflops
    self.analytic_gflops = cost.analytic_gflops
    self.dtype = jnp.dtype(config.model.get("dtype", "float32"))
    # The train step is timed on a fixed state (no donation): every call
    # does the same work, and the state stays valid.
    self.train_once = _timer(
        step_compiled, state, {"inputs": images, "label": labels}
    )
    self._forward_compiled = cost.forward
    self.infer_once = _timer(cost.forward, state.params, images)
    self.batch = batch

  @property
  def infer_hlo(self) -> str:
    """The compiled forward's HLO text."""
    return self._forward_compiled.as_text()

  @property
  def train_hlo(self) -> str:
    """The compiled train step's HLO text, which names each op's source
    line (`profiling.op_sources`); taken only when a profile needs it."""
    return self._step_compiled.as_text()


def run(
    benches: list[Bench], repeats: int, report=print
) -> dict[str, dict[str, float]]:
  """Times all models in interleaved rounds; reports and returns the rows."""
  samples = {b.label: {"train": [], "infer": []} for b in benches}
  for b in benches:  # Warm-up.
    b.train_once()
    b.infer_once()
  for b in elastic.interleaved(benches, repeats):
    samples[b.label]["train"].append(b.train_once())
    samples[b.label]["infer"].append(b.infer_once())
  device = jax.devices()[0]
  peaks = {d: matmul_peak_tflops(d) for d in {b.dtype for b in benches}}
  report(
      f"\ndevice: {device.device_kind} ({device.platform}); batch "
      f"{benches[0].batch}; median of {repeats}; matmul peak "
      + ", ".join(f"{d.name} {p:.3g} TFLOP/s" for d, p in peaks.items())
  )
  width = max(46, max(len(b.label) for b in benches) + 1)
  report(
      f"{'model':<{width}}{'dtype':>9}{'train img/s':>12}{'infer img/s':>12}"
      f"{'compile s':>14}{'static GF':>10}{'analytic GF':>12}{'tape':>6}"
      f"{'MFU':>7}"
  )
  rows = {}
  for b in benches:
    train_s = statistics.median(samples[b.label]["train"])
    infer_s = statistics.median(samples[b.label]["infer"])
    mfu = (
        flops.TRAIN_STEP_FACTOR
        * b.analytic_gflops
        * b.batch
        / train_s
        / 1e3
        / peaks[b.dtype]
    )
    rows[b.label] = dict(
        dtype=b.dtype.name,
        mfu=mfu,
        analytic_gflops=b.analytic_gflops,
        matmul_peak_tflops=peaks[b.dtype],
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
    report(
        f"{b.label:<{width}}{b.dtype.name:>9}{b.batch / train_s:>12.2f}"
        f"{b.batch / infer_s:>12.2f}"
        f"{b.train_compile_s:>7.1f}+{b.infer_compile_s:<6.1f}"
        f"{b.static_gflops:>10.3g}{b.analytic_gflops:>12.3g}{tape:>6}"
        f"{mfu:>7.1%}"
    )
  return rows


# Train steps traced per model with --profile.
PROFILE_STEPS = 3


def profile(benches: list[Bench], folder: str, top: int, report=print):
  """Traces `PROFILE_STEPS` train steps of each model into
  folder/<model> (after the timing, which the tracer would slow) and
  reports the step's XLA ops by their own time (`profiling.op_profile`)."""
  for b in benches:
    path = os.path.join(folder, re.sub(r"[^A-Za-z0-9.=]+", "_", b.label))
    jax.profiler.start_trace(path)
    try:
      for _ in range(PROFILE_STEPS):
        b.train_once()
    finally:
      jax.profiler.stop_trace()
    report(f"\n{b.label}: train step, by XLA op")
    try:
      lines = profiling.report(
          profiling.op_profile(path),
          PROFILE_STEPS,
          top,
          profiling.op_sources(b.train_hlo),
      )
    except run_config.ConfigError as e:  # The timings stand without it.
      lines = [f"no op table: {e}"]
    for line in lines:
      report(line)


def compare(benches: list[Bench], rows, report=print) -> None:
  """The step-time vs analytic FLOP ratio of each AdaTape to the first
  ViT (under `--vary=xla_...`, the first compiled with the same option)."""
  vits = [b for b in benches if b.config.model.name == "transformer"]
  if not vits:
    return
  for b in benches:
    if b.config.model.name != "adatape":
      continue
    same = [v for v in vits if v.compiler_options == b.compiler_options]
    base = (same or vits)[0]
    time_ratio = (
        rows[b.label]["train_step_s"] / rows[base.label]["train_step_s"]
    )
    flop_ratio = b.analytic_gflops / base.analytic_gflops
    # XLA's own count only where it sees every matmul: on a GPU its cost
    # analysis leaves out the library GEMMs (a ratio of 8.86 on the H200,
    # experiments/results/throughput_nvidia_h200_global_norm.txt).
    xla = (
        f"; XLA train-step FLOP ratio {b.train_gflops / base.train_gflops:.3f}"
        if layers.platform() == "cpu"
        else ""
    )
    report(
        f"{b.label} / {base.label}: train step time ratio "
        f"{time_ratio:.3f}, analytic FLOP ratio {flop_ratio:.3f} "
        f"({b.analytic_gflops:.2f} / {base.analytic_gflops:.2f} GF per "
        f"image forward){xla}"
    )


def parse_vary(vary: str) -> tuple[str, list[str]]:
  """`KEY=V1,V2,...` as (KEY, [V1, V2, ...]); ("", []) for none."""
  if not vary:
    return "", []
  key, _, values = vary.partition("=")
  items = [v.strip() for v in values.split(",") if v.strip()]
  run_config.check(
      bool(key.strip()) and len(items) >= 2,
      f"--vary={vary!r} must be KEY=V1,V2,... with two values or more, "
      "e.g. tape.scan_unroll=1,10",
  )
  return key.strip(), items


def _has_key(config: ml_collections.ConfigDict, key: str) -> bool:
  node = config
  for name in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or name not in node:
      return False
    node = node[name]
  return True


def xla_option(text: str) -> bool | int | str:
  """A `--vary` value of an XLA option: true/false, an integer, or text."""
  if text.lower() in ("true", "false"):
    return text.lower() == "true"
  try:
    return int(text)
  except ValueError:
    return text


def varied(loaded: list[Any], vary: str) -> list[Any]:
  """(label, config, params, XLA compiler options) per model and value of
  `--vary`'s key, the label naming the value. A key that starts with
  `xla_` is an XLA option (the name XLA_FLAGS takes without its dashes),
  set on every model's programs; any other is a config key, varied where
  the config has it (a ViT has no `tape.*`: it runs once, as the others'
  reference). Without `--vary`, each model once with no options."""
  key, values = parse_vary(vary)
  if not key:
    return [(label, config, params, None) for label, config, params in loaded]
  is_xla = key.startswith("xla_")
  run_config.check(
      is_xla or any(_has_key(config, key) for _, config, _ in loaded),
      f"--vary: {key} is not a key of any model's config (nor an XLA "
      "option: xla_...)",
  )
  out = []
  for label, config, params in loaded:
    if not is_xla and not _has_key(config, key):
      out.append((label, config, params, None))
      continue
    for value in values:
      options, config_v = None, config
      if is_xla:
        options = {key: xla_option(value)}
      else:
        config_v = copy.deepcopy(config)
        run_config.set_from_text(config_v, key, value, "--vary")
      out.append((f"{label} {key}={value}", config_v, params, options))
  return out


def compare_values(benches: list[Bench], rows, vary: str, report) -> None:
  """Under `--vary`, each model's train and forward step times at every
  value against its times at the first."""
  key, values = parse_vary(vary)
  firsts = [
      b for b in benches if key and b.label.endswith(f" {key}={values[0]}")
  ]
  for first in firsts:
    model = first.label.rsplit(f" {key}=", 1)[0]
    for step in ("train", "infer"):
      base = rows[first.label][f"{step}_step_s"]
      ratios = ", ".join(
          f"{value} "
          f"{rows[f'{model} {key}={value}'][f'{step}_step_s'] / base:.4f}"
          for value in values[1:]
      )
      report(f"{model}: {step} step time at {key}=V / at {values[0]}: {ratios}")


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
  parser.add_argument(
      "--dtype",
      default="",
      help="override every model's model.dtype (float32, bfloat16)",
  )
  parser.add_argument(
      "--attention",
      default="",
      help="override every model's model.attention (auto, xla, cudnn)",
  )
  parser.add_argument(
      "--vary",
      default="",
      help="KEY=V1,V2,...: each model at each value of one config key, "
      "or of one XLA option (xla_...: as XLA_FLAGS names it, set per "
      "program), timed in the same interleaved rounds (an A/B in one "
      "process)",
  )
  parser.add_argument(
      "--out", default="", help="also write the printed report here"
  )
  parser.add_argument(
      "--save",
      action="store_true",
      help="--out=experiments/results/throughput_<device>.txt",
  )
  parser.add_argument("--json", default="", help="also write the rows as JSON")
  parser.add_argument(
      "--profile",
      default="",
      help="a local folder: trace a few train steps of each model there "
      "and report their XLA ops by time",
  )
  parser.add_argument(
      "--profile_top", type=int, default=15, help="ops listed per model"
  )
  args = parser.parse_args()
  try:
    for flag in ("batch", "repeats", "profile_top"):
      value = getattr(args, flag)
      run_config.check(value >= 1, f"--{flag}={value} must be >= 1")
    loaded = [
        (
            spec.replace("configs/", ""),
            run_config.load(spec, f"--spec={spec}"),
            None,
        )
        for spec in args.spec or ([] if args.workdir else DEFAULT_SPECS)
    ]
    loaded += [
        (w.rstrip("/").split("/")[-1], *analysis.read_run(w)[::2])
        for w in args.workdir
    ]
    for _, config, _ in loaded:
      if args.dtype:
        config.model.dtype = args.dtype
      if args.attention:
        config.model.attention = args.attention
    benches = [
        Bench(
            label,
            config,
            params,
            args.batch,
            args.num_classes if params is None else head_classes(params),
            options,
        )
        for label, config, params, options in varied(loaded, args.vary)
    ]
  except (run_config.ConfigError, checkpointing.CheckpointError) as e:
    sys.exit(f"error: {e}")
  except jax.errors.JaxRuntimeError as e:
    if not args.vary.startswith("xla_"):
      raise
    # XLA refuses an option it does not know, or a value of the wrong
    # type, when it compiles the first program.
    sys.exit(f"error: --vary={args.vary}: {str(e).splitlines()[0]}")
  lines = []

  def report(line: str) -> None:
    print(line, flush=True)
    lines.append(line)

  report(f"# python -m experiments.throughput {shlex.join(sys.argv[1:])}")
  report(f"jax {jax.__version__}; compile s = train step + forward")
  if os.environ.get("XLA_FLAGS"):
    report(f"XLA_FLAGS={os.environ['XLA_FLAGS']}")
  rows = run(benches, args.repeats, report)
  compare(benches, rows, report)
  compare_values(benches, rows, args.vary, report)
  out = args.out
  if args.save and not out:
    kind = re.sub(r"[^a-z0-9]+", "_", jax.devices()[0].device_kind.lower())
    out = f"experiments/results/throughput_{kind.strip('_')}.txt"
  if out:
    storage.write_atomic(out, "\n".join(lines) + "\n")
    print(f"wrote {out}")
  if args.profile:
    # After the timings are written: they stand whatever the tracer does.
    profile(benches, args.profile, args.profile_top, report)
    if out:
      storage.write_atomic(out, "\n".join(lines) + "\n")
      print(f"wrote {out} (with the op tables)")
  if args.json:
    with open(args.json, "w") as f:
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
