r"""Padded vs elastic inference of a trained AdaTape run: time and FLOPs.

  python -m experiments.elastic_inference --workdir=RUN [--batch=N] \
      [--buckets=2,4,6,8|tuned] [--chunk=C] [--group=G] [--epsilon=E] \
      [--max_tokens=T] [--examples=N] [--repeats=R] [--dtype=float32] \
      [--out=FILE] [--processes=P]
  python -m experiments.elastic_inference \
      --config=configs/imagenet/adatape.py --examples=128 --batch=32 ...

Runs the run's checkpoint over its eval set (or the first --examples of
it), or with --config a randomly initialised model of that config over
--examples random images (for models no run here has trained, such as
AdaTape-S/16: the tape lengths are then those of the initial reader),
four ways, in one process, interleaved, after a warm-up that compiles
every shape:
  padded        the padded execution: all T / p reading steps, then
                every block on all T tape slots (tape.exit_early=never)
  padded/chunk  the same, one chunk of --chunk examples at a time (a loop in
                one compiled call, as elastic runs its chunks): on a CPU a
                smaller batch can be faster per example by itself, which
                is not the tape's doing
  padded+exit   the same, with the reading loop stopping once the batch
                has halted (tape.exit_early=always; `auto`, the default,
                takes it on CPU only)
  elastic       `adatape/elastic.py`: the read as the run's config says
                (`auto`: early exit on CPU), then the blocks after the
                tape per length bucket, on sequences cut to the bucket
and prints the median time of each, the theoretical saving (1 - analytic
FLOPs at the measured tape lengths / FLOPs of the padded computation,
`adatape/models/flops.py`), the saving the buckets allow, and the realized
saving: 1 - elastic time / the faster of padded and padded/chunk (each
against padded alone is printed too).

Where the time goes, to say what any bucketing could realize here: the
prefix (stem, bank, blocks before the tape, the read as elastic runs it)
is timed on the whole batch in the same rounds, and so are the blocks
after the tape on a whole batch at every tape length, in chunks as
elastic runs them (`elastic.suffix_runners`). Bucketing can only cut the
second: the "ceiling" is its share of the two (at T) times how much faster
it runs with every example at its own tape length than at T. Where that
is far below the theoretical saving, the platform's time is not in step
with the FLOPs: a prefix that costs more than its FLOPs, or blocks whose
time falls slower than their tokens. --buckets=tuned takes the buckets
from timings of the same blocks (`elastic.fastest_buckets`) instead of
T/4, T/2, 3T/4, T. --epsilon and --max_tokens turn the budget knob first
(no parameter depends on them). Last line: `realized X% of time saved,
theoretical Y%`. --processes=P runs all of it in P fresh processes one
after another (`in_processes`) and reports each pass and the median of
their realized savings, since one process's timing is not a result on a
machine whose speed moves between processes.
"""

import argparse
import os
import re
import shlex
import statistics
import subprocess
import sys

import jax
import ml_collections
import numpy as np

from adatape import analysis
from adatape import assemble
from adatape import checkpointing
from adatape import elastic
from adatape import models
from adatape import run_config
from adatape import storage
from adatape.models import adatape as adatape_model

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The last line of every report: what `in_processes` collects.
_LAST_LINE = re.compile(
    r"realized (-?[0-9.]+)% of time saved, theoretical (-?[0-9.]+)%"
)


def in_processes(module: str, argv: list[str], processes: int, out: str):
  """`python -m module argv` in `processes` fresh processes, one after
  another, each timing on its own: on a shared or small machine the same
  computation can run tens of percent faster or slower in one process than
  in the next (up to 49% on the 2-core CPU, README), more than the savings
  measured, so one process's figure is not a result. Prints (and writes to
  `out`, only once every process has succeeded) each report under `## pass
  i of N`, then the realized saving of each pass and, last, `realized X% of
  time saved, theoretical Y%` with X their median. Returns the first
  failing process's exit code (its stderr passed on), else 0."""
  lines = []
  realized, theoretical = [], None
  # The repository on the path, so that `-m experiments...` imports from
  # any working directory (relative paths in argv stay the caller's).
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
      p for p in (_REPO, env.get("PYTHONPATH")) if p
  )
  for index in range(processes):
    result = subprocess.run(
        [sys.executable, "-m", module, *argv, "--processes=1", "--out="],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    if result.returncode:
      sys.stderr.write(result.stderr)
      return result.returncode
    report = result.stdout.strip().splitlines()
    match = _LAST_LINE.fullmatch(report[-1]) if report else None
    if match is None:
      print(
          f"error: pass {index + 1} of {module} ended without its "
          "'realized X% of time saved, theoretical Y%' line",
          file=sys.stderr,
      )
      return 1
    realized.append(float(match.group(1)))
    theoretical = match.group(2)
    pass_lines = [f"## pass {index + 1} of {processes}", *report]
    print("\n".join(pass_lines), flush=True)
    lines += pass_lines
  lines += [
      "realized per process: " + " / ".join(f"{r:.1f}" for r in realized) + "%",
      f"realized {statistics.median(realized):.1f}% of time saved, "
      f"theoretical {theoretical}% (median of {processes} processes)",
  ]
  print("\n".join(lines[-2:]), flush=True)
  if out:
    storage.write_atomic(out, "\n".join(lines) + "\n")
  return 0


def add_report_flags(parser: argparse.ArgumentParser) -> None:
  """--out and --processes, which every timing script takes."""
  parser.add_argument("--out", default="", help="also write the report here")
  parser.add_argument(
      "--processes",
      type=int,
      default=1,
      help="run the whole timing in this many fresh processes, one after "
      "another, and report each and their median",
  )


def timed_elsewhere(module: str, argv: list[str], args) -> int | None:
  """The exit code when --processes leaves nothing to time in this
  process: `in_processes` for more than one, 2 (said on stderr) for fewer
  than one. None: time here."""
  if args.processes < 1:
    print(f"error: --processes={args.processes} must be >= 1", file=sys.stderr)
    return 2
  if args.processes > 1:
    return in_processes(module, argv, args.processes, args.out)
  return None


def _reading(config, exit_early: str) -> ml_collections.ConfigDict:
  """A copy of `config` whose inference read exits early or not."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.tape.exit_early = exit_early
  return config


def _random_init(configs, examples):
  """Models of `configs` (which differ only in how they read the tape) at
  the first one's initial parameters, and random images of its input shape
  (no dataset needed): (models, params, inputs)."""
  config = configs[0]
  size = config.data.get("image_size")
  run_config.check(
      bool(size),
      "--config: random images need an image config (data.image_size); "
      "train it and pass --workdir instead",
  )
  input_shape = (size, size, 3)
  num_classes = config.data.get("num_classes") or 1000

  def build(cfg):
    return models.build(cfg, input_shape=input_shape, num_classes=num_classes)

  model = build(config)
  key = jax.random.key(config.get("seed", 0))
  # Jitted: one compile, not one per op of an eager init.
  params = jax.jit(
      lambda k: model.init(
          {"params": k, "halting": k},
          np.zeros((1,) + input_shape, np.float32),
          train=False,
      )["params"]
  )(key)
  rng = np.random.default_rng(0)
  inputs = rng.uniform(-1, 1, (examples,) + input_shape).astype(np.float32)
  return [model] + [build(c) for c in configs[1:]], params, inputs


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--workdir", help="a trained AdaTape run")
  source.add_argument("--config", help="config[:args] to initialise at random")
  parser.add_argument("--batch", type=int, default=1024)
  parser.add_argument(
      "--buckets",
      default="",
      help="tape lengths, e.g. 2,4,6,8 (default: T/4, T/2, 3T/4, T), or "
      "'tuned': the lengths that run fastest on this device",
  )
  parser.add_argument("--epsilon", type=float, default=0.0)
  parser.add_argument("--max_tokens", type=int, default=0)
  parser.add_argument("--examples", type=int, default=0)
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--chunk", type=int, default=128)
  parser.add_argument(
      "--group", type=int, default=0, help="elastic group (0: the batch)"
  )
  parser.add_argument(
      "--dtype", default="", help="model.dtype (default: the config's)"
  )
  add_report_flags(parser)
  args = parser.parse_args(argv)
  code = timed_elsewhere("experiments.elastic_inference", argv, args)
  if code is not None:
    return code
  lines = []

  def report(line: str) -> None:
    print(line, flush=True)
    lines.append(line)

  try:
    if args.workdir:
      config, step, params = analysis.read_run(args.workdir)
      what = f"run {args.workdir} (step {step})"
    else:
      config, params = run_config.load(args.config), None
      what = f"config {args.config} (random init, random images)"
    config = ml_collections.ConfigDict(config.to_dict())
    run_config.check(
        config.model.name == "adatape",
        f"{args.workdir or args.config} is a {config.model.name!r} model; "
        "elastic inference needs AdaTape",
    )
    if args.epsilon:
      config.tape.epsilon = args.epsilon
    if args.max_tokens:
      config.tape.num_tokens = args.max_tokens
    if args.dtype:
      config.model.dtype = args.dtype
    padded_config, exit_config = (
        _reading(config, exit_early) for exit_early in ("never", "always")
    )
    if args.workdir:
      run = assemble.prepare(config)
      model = run.model
      padded_model, exit_model = (
          assemble.prepare(c).model for c in (padded_config, exit_config)
      )
      inputs = analysis.eval_inputs(run, args.examples)
    else:
      (model, padded_model, exit_model), params, inputs = _random_init(
          (config, padded_config, exit_config), args.examples or args.batch
      )
    buckets = args.buckets
    if buckets != "tuned":
      buckets = elastic.parse_buckets(
          buckets
          or ",".join(
              map(str, elastic.default_buckets(config.tape.num_tokens))
          ),
          config.tape.num_tokens,
      )
    # One device, the one the padded forwards it is timed against run on.
    predictor = elastic.Predictor(
        model, params, buckets, chunk=args.chunk, group=args.group, devices=1
    )
  except (run_config.ConfigError, checkpointing.CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2

  batches = analysis.whole_batches(inputs, args.batch)
  used = sum(len(b) for b in batches)
  # A chunk of the whole batch: one call of the forward per batch.
  padded = elastic.forward_in_chunks(padded_model, args.batch)
  exiting = elastic.forward_in_chunks(exit_model, args.batch)
  padded_chunks = elastic.forward_in_chunks(
      padded_model, min(args.chunk, args.batch)
  )
  prefix = jax.jit(
      lambda p, x: elastic.Prefix(model.config).apply({"params": p}, x)
  )
  outs = [predictor(b) for b in batches]  # Compiles every bucket shape.
  batch = len(batches[0])  # The one short batch there may be.
  chunk = min(args.chunk, batch)
  medians = elastic.median_times(
      {
          "padded": lambda: [padded(params, b) for b in batches],
          "padded/chunk": lambda: [padded_chunks(params, b) for b in batches],
          "padded+exit": lambda: [exiting(params, b) for b in batches],
          "elastic": lambda: [predictor(b).logits for b in batches],
          "prefix": lambda: [prefix(params, b) for b in batches],
          **elastic.suffix_runners(model, params, chunk, batch),
      },
      args.repeats,
  )
  per_length = {n: t for n, t in medians.items() if isinstance(n, int)}

  cfg = model.config
  lengths = np.concatenate([o.tape_length for o in outs])
  bucket_of = np.concatenate([o.bucket for o in outs])
  flops_read = np.concatenate([o.flops for o in outs])
  num_main = cfg.main_tokens()
  entries = adatape_model.bank_entries(cfg)
  full = adatape_model.computed_flops(cfg, num_main, entries)
  pairs, counts = np.unique(
      np.stack([lengths, bucket_of], 1), axis=0, return_counts=True
  )
  bucketed = sum(
      count
      * adatape_model.computed_flops(
          cfg, num_main, entries, read=int(n), slots=int(b)
      )
      for (n, b), count in zip(pairs, counts)
  ) / len(lengths)
  theoretical = 1.0 - float(flops_read.mean()) / full
  bucket_bound = 1.0 - bucketed / full

  report(f"# python -m experiments.elastic_inference {shlex.join(argv)}")
  device = jax.devices()[0]
  report(
      f"{what}; device {device.device_kind}; "
      f"{used} examples in batches of {args.batch}; median of "
      f"{args.repeats}; T={cfg.tape.num_tokens}, epsilon={cfg.tape.epsilon}"
  )
  buckets = predictor.buckets
  report(
      f"tape length: mean {lengths.mean():.2f}, range {lengths.min()}-"
      f"{lengths.max()}; buckets {buckets}: "
      + ", ".join(f"{b}: {int((bucket_of == b).sum())}" for b in buckets)
  )
  for name, seconds in medians.items():
    if isinstance(name, int):
      continue
    report(f"{name:<12} {seconds * 1e3:9.1f} ms  {used / seconds:10.0f} ex/s")
  against = {
      name: 1.0 - medians["elastic"] / medians[name]
      for name in ("padded", "padded/chunk")
  }
  realized = min(against.values())  # Against the faster padded execution.
  report(
      f"blocks after the tape, a batch in chunks of {chunk}, ms per tape "
      "length: "
      + ", ".join(f"{n}: {s * 1e3:.3f}" for n, s in per_length.items())
      + f" (length 1 / T: {per_length[1] / per_length[len(per_length)]:.2f}"
      f", tokens {(num_main + 1) / (num_main + len(per_length)):.2f})"
  )
  full_suffix = per_length[max(per_length)]
  own_suffix = sum(per_length[int(n)] for n in lengths) / len(lengths)
  suffix_saving = 1.0 - own_suffix / full_suffix
  # Of the prefix and the blocks after the tape (each measured alone, on
  # the batch's examples), the share bucketing can cut.
  suffix_share = full_suffix * len(lengths) / batch
  suffix_share /= suffix_share + medians["prefix"]
  ceiling = suffix_share * suffix_saving
  report(
      f"prefix {medians['prefix'] * 1e3:.1f} ms = {1 - suffix_share:.0%} "
      f"of prefix + blocks after the tape at T; those blocks at each "
      f"example's own tape length: {suffix_saving:.1%} faster than at T; "
      f"ceiling for bucketing here: {ceiling:.1%} saved"
  )
  report(
      f"analytic MFLOPs per example: padded {full / 1e6:.4f}, at the tape "
      f"read {flops_read.mean() / 1e6:.4f}, at the buckets "
      f"{bucketed / 1e6:.4f}"
  )
  report(
      "elastic saves "
      + ", ".join(f"{v:.1%} against {k}" for k, v in against.items())
  )
  report(
      f"saving: theoretical {theoretical:.1%}, within the buckets "
      f"{bucket_bound:.1%}, ceiling {ceiling:.1%}, realized {realized:.1%} "
      f"({realized / theoretical:.0%} of the theoretical)"
      if theoretical > 0
      else f"saving: theoretical 0 (every tape is full), realized "
      f"{realized:.1%}"
  )
  report(
      f"realized {realized:.1%} of time saved, theoretical {theoretical:.1%}"
  )
  if args.out:
    storage.write_atomic(args.out, "\n".join(lines) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
