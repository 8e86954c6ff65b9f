r"""Turn the budget knob of a trained run at inference.

  python -m adatape.budget --workdir=RUN --thresholds=1,2,4 \
      [--max_tokens=4,8] [--step=N] [--speed_examples=N] \
      [--speed_batch=B] [--speed_chunk=C] [--speed_repeats=R]

Evaluates one checkpoint of RUN at every (halting threshold, maximum tape
length) pair and writes RUN/budget.{md,csv,png}: eval accuracy against
compute: the model's own measure (mean tape length), analytic GFLOPs per
example, and measured inference speed over the first --speed_examples eval
examples (in batches of --speed_batch, cut to whole chunks of
--speed_chunk), plus the effective sequence length (main tokens plus the
mean tape). For AdaTape the speed is that of elastic execution
(`adatape/elastic.py`, `examples_per_s`) and, beside it, of the padded
forward in the same chunks (`padded_examples_per_s`), so each point says
what its tape saved in time as well as in FLOPs; other models have the
jitted forward only. Every point is timed in the same interleaved rounds
(`elastic.median_times`, --speed_repeats of them) after all are compiled,
so drift on a shared machine hits every point alike instead of the ones
timed last.
For AdaTape the threshold is `tape.epsilon` and the maximum length
`tape.num_tokens`; no parameter depends on either, so one set of weights
serves every point. For ACT models (Universal Transformer) the threshold is
`model.act_epsilon`. Points whose settings are invalid for the model (for
example a bank too small for K = T / epsilon candidates per step) are
reported and skipped.
"""

import functools
import sys

from absl import app
from absl import flags

from adatape import storage

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished or running run.")
_THRESHOLDS = flags.DEFINE_list("thresholds", [], "Halting thresholds.")
_MAX_TOKENS = flags.DEFINE_list(
    "max_tokens", [], "Maximum tape lengths (AdaTape; default: the run's)."
)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_SPEED_EXAMPLES = flags.DEFINE_integer(
    "speed_examples",
    2048,
    "Eval examples timed at each point (elastic and padded for AdaTape); "
    "0: no timing.",
)
_SPEED_REPEATS = flags.DEFINE_integer(
    "speed_repeats",
    5,
    "Timing rounds; each point's speed is the median over the rounds.",
)
_SPEED_BATCH = flags.DEFINE_integer(
    "speed_batch",
    0,
    "Examples per inference call when timing (0: the run's eval batch).",
)
_SPEED_CHUNK = flags.DEFINE_integer(
    "speed_chunk",
    128,
    "Examples per chunk when timing (elastic and padded alike).",
)


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def budget_points(config, thresholds, max_tokens):
  """(label, overrides) for every requested point."""
  is_tape = "tape" in config
  threshold_key = "tape.epsilon" if is_tape else "model.act_epsilon"
  base_threshold = (
      config.tape.epsilon if is_tape else config.model.get("act_epsilon")
  )
  if base_threshold is None:
    _fail(f"model {config.model.name!r} has no halting threshold to vary")
  thresholds = thresholds or [base_threshold]
  lengths = max_tokens if is_tape and max_tokens else [None]
  points = []
  for length in lengths:
    for threshold in thresholds:
      overrides = {threshold_key: float(threshold)}
      if length is not None:
        overrides["tape.num_tokens"] = int(length)
      points.append(overrides)
  return points


def evaluate_budgets(
    workdir,
    thresholds,
    max_tokens,
    step=None,
    speed_examples=2048,
    speed_repeats=5,
    speed_batch=0,
    speed_chunk=128,
):
  """Evaluates every point; returns rows of metrics, with the measured
  inference speed on the first `speed_examples` eval examples (0: not
  measured) in batches of `speed_batch` (0: the run's eval batch) and
  chunks of `speed_chunk`, the median of `speed_repeats` interleaved
  rounds over all points."""
  # pylint: disable=g-import-not-at-top
  import jax
  import ml_collections
  from adatape import analysis
  from adatape import assemble
  from adatape import checkpointing
  from adatape import elastic
  from adatape import parallel
  from adatape import run_config
  from adatape import train
  # pylint: enable=g-import-not-at-top

  if speed_examples:
    if speed_repeats < 1:
      _fail(f"--speed_repeats={speed_repeats} must be >= 1")
    if speed_chunk < 1 or speed_batch < 0 or speed_batch % speed_chunk:
      _fail(
          f"--speed_batch={speed_batch} must be 0 (the run's eval batch) or "
          f"a multiple of --speed_chunk={speed_chunk} >= 1"
      )
  try:
    base, step, params = analysis.read_run(workdir, step)
  except (run_config.ConfigError, checkpointing.CheckpointError) as e:
    _fail(str(e))

  rows, runners, labels = [], {}, []
  for overrides in budget_points(base, thresholds, max_tokens):
    config = ml_collections.ConfigDict(base.to_dict())
    config.update_from_flattened_dict(overrides)
    label = ", ".join(f"{k}={v}" for k, v in overrides.items())
    try:
      run = assemble.prepare(config)
    except run_config.ConfigError as e:
      print(f"skip ({label}): {e}", flush=True)
      continue
    mesh = parallel.make_mesh(run.mesh)
    jit_eval = jax.jit(
        functools.partial(
            train.eval_step, model=run.model, loss=run.schedule.loss
        )
    )
    metrics = train.evaluate(
        jit_eval,
        params,
        run.source,
        mesh,
        run.schedule.eval_batch_size // jax.process_count(),
    )
    row = {"model": config.model.name, "step": step, **overrides, **metrics}
    if "eval/tape_length" in metrics:
      # Main tokens (196 patches at S/16 and 224 px, 1 on parity) plus the
      # mean tape: what the blocks after the tape attend over.
      row["effective_length"] = (
          run.model.config.main_tokens() + metrics["eval/tape_length"]
      )
    if speed_examples:
      point_runners, row["speed_examples"] = analysis.inference_runners(
          run,
          params,
          analysis.eval_inputs(run, speed_examples),
          speed_batch or run.schedule.eval_batch_size,
          speed_chunk,
      )
      for kind, call in point_runners.items():
        runners[len(rows), kind] = call
    rows.append(row)
    labels.append(label)
    cost = [m for m in run.metrics if m.label]
    print(
        f"{label}: accuracy {metrics['eval/accuracy']:.4f}"
        + "".join(f", {m.label} {metrics[f'eval/{m.name}']:.2f}" for m in cost)
        + f", {metrics['eval/gflops'] * 1e3:.4g} MFLOPs",
        flush=True,
    )
  if runners:
    # Compiled (the warm-up call of each), then timed round after round.
    seconds = elastic.median_times(runners, speed_repeats)
    print(
        f"inference speed, median of {speed_repeats} interleaved rounds:",
        flush=True,
    )
    for index, row in enumerate(rows):
      speed = {
          kind: row["speed_examples"] / seconds[i, kind]
          for i, kind in runners
          if i == index
      }
      row["examples_per_s"] = speed.get("elastic", speed["padded"])
      if "elastic" in speed:
        row["padded_examples_per_s"] = speed["padded"]
        print(
            f"  {labels[index]}: elastic {speed['elastic']:.0f} ex/s, padded "
            f"{speed['padded']:.0f} ex/s (elastic "
            f"{speed['elastic'] / speed['padded'] - 1:+.1%})",
            flush=True,
        )
      else:  # Not AdaTape: its forward only.
        print(f"  {labels[index]}: {speed['padded']:.0f} ex/s", flush=True)
  return rows


def write_outputs(rows, workdir):
  """budget.md, budget.csv and budget.png in the workdir."""
  if not rows:
    _fail("no valid budget point to evaluate")
  from adatape import reporting  # pylint: disable=g-import-not-at-top

  keys = list(dict.fromkeys(k for r in rows for k in r))
  reporting.write_table(rows, storage.join(workdir, "budget"), keys)

  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from adatape import models  # pylint: disable=g-import-not-at-top

  cost = f"eval/{models.cost_metric(rows[0]['model']).name}"
  axes_keys = [cost, "eval/gflops"]
  if all("examples_per_s" in r for r in rows):
    axes_keys.append("examples_per_s")
  fig, axes = plt.subplots(
      1, len(axes_keys), figsize=(4.5 * len(axes_keys), 3.5), squeeze=False
  )
  accuracy = [r["eval/accuracy"] for r in rows]
  padded = [r.get("padded_examples_per_s") for r in rows]
  for ax, key in zip(axes[0], axes_keys):
    # Markers only: the points are settings, not a curve.
    ax.plot([r[key] for r in rows], accuracy, "o")
    ax.xaxis.set_major_locator(plt.MaxNLocator(4))
    if key == "examples_per_s" and None not in padded:
      # The same points run padded: how far right elastic moved each.
      ax.plot(padded, accuracy, "s", mfc="none", color="gray")
      ax.legend(["elastic", "padded"], fontsize=7)
    for r in rows:
      ax.annotate(
          ",".join(
              f"{v}"
              for k, v in r.items()
              if k in ("tape.epsilon", "tape.num_tokens", "model.act_epsilon")
          ),
          (r[key], r["eval/accuracy"]),
          fontsize=7,
      )
    ax.set_xlabel(
        {
            "eval/gflops": "analytic GFLOPs per example",
            "examples_per_s": "measured inference examples/s",
        }.get(key, key)
    )
    ax.set_ylabel("eval/accuracy")
  fig.tight_layout()
  storage.save_figure(fig, storage.join(workdir, "budget.png"), dpi=120)
  plt.close(fig)
  print(f"wrote {workdir}/budget.md, budget.csv, budget.png")


def main(argv):
  del argv
  if not _WORKDIR.value:
    _fail("--workdir is required")
  try:
    thresholds = [float(t) for t in _THRESHOLDS.value]
    max_tokens = [int(t) for t in _MAX_TOKENS.value]
  except ValueError as e:
    _fail(f"--thresholds/--max_tokens: {e}")
  rows = evaluate_budgets(
      _WORKDIR.value,
      thresholds,
      max_tokens,
      _STEP.value,
      _SPEED_EXAMPLES.value,
      _SPEED_REPEATS.value,
      _SPEED_BATCH.value,
      _SPEED_CHUNK.value,
  )
  write_outputs(rows, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
