"""What every model returns, by name, and the metrics it names itself.

A model module declares `METRICS`, the per-example quantities its output
carries in `ModelOutput.metrics_B` (tape length, ACT steps, learners used,
...). The trainer logs each as `train/NAME` and `eval/NAME`, the console
prints those with a label, and the tools that plot accuracy against
compute (the budget knob, sweeps, method tables) read the one marked
`cost`. Adding a method therefore touches its own module only.
"""

import dataclasses
from typing import Mapping, NamedTuple

import jax


@dataclasses.dataclass(frozen=True)
class Metric:
  """A per-example quantity a model reports under its own name.

  Attributes:
    name: the key in `ModelOutput.metrics_B`; logged as `train/NAME` and
      `eval/NAME` (means over examples).
    description: what it counts, for table columns and plot axes.
    label: short console label; empty: not printed on the progress line.
    cost: the method's own measure of compute used: what the budget knob
      and sweeps plot accuracy against, and tables call "compute used".
    spread: also log the variance over examples (`NAME_var`), for
      quantities whose spread is itself of interest (AdaTape's tape length).
  """

  name: str
  description: str
  label: str = ""
  cost: bool = False
  spread: bool = False


# Every model returns `flops_B`; the trainer logs it as this metric.
GFLOPS = Metric("gflops", "analytic encoder GFLOPs per example")


class ModelOutput(NamedTuple):
  """Logits plus the named auxiliaries the trainer logs and optimises.

  Attributes:
    logits: `[B, C]`.
    aux_loss_B: the method's own regulariser per example, already weighted
      (lambda * ATR loss for AdaTape, tau * ponder cost for ACT); the
      training loss adds its batch mean. Zeros for models without one.
    flops_B: analytic forward FLOPs of the encoder per example, counting
      only the work the method's decisions require (tokens still running,
      tape tokens read, learners chosen) plus its own overhead (reader,
      halting units, gates, routers); see `models/flops.py`.
    metrics_B: the model's declared `METRICS`, `[B]` each, by name.
    tape_mask_BxT: which tape slots are valid (AdaTape).
    token_depth_BxL: per-token number of layers or steps used (`updates`),
      for depth maps.
    step_logits_SxBxC: PonderNet's prediction at every step.
    step_log_probs_BxS: PonderNet's log halting distribution over steps;
      with `step_logits_SxBxC` the task loss is the expectation over steps.
    bank_reads_BxM: how many times each bank entry was merged into one of
      the example's valid tape tokens, summed over tapes (AdaTape; for the
      tape-selection heatmap).
  """

  logits: jax.Array
  aux_loss_B: jax.Array
  flops_B: jax.Array
  metrics_B: Mapping[str, jax.Array]
  tape_mask_BxT: jax.Array | None = None
  token_depth_BxL: jax.Array | None = None
  step_logits_SxBxC: jax.Array | None = None
  step_log_probs_BxS: jax.Array | None = None
  bank_reads_BxM: jax.Array | None = None


def per_example_metrics(out: ModelOutput) -> dict[str, jax.Array]:
  """Every metric of `out` as float32 `[B]`, GFLOPs included."""
  values = {
      name: value.astype("float32") for name, value in out.metrics_B.items()
  }
  values[GFLOPS.name] = out.flops_B.astype("float32") / 1e9
  return values
