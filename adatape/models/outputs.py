"""ModelOutput: what every model returns, by name, never by position."""

from typing import NamedTuple

import jax


class ModelOutput(NamedTuple):
  """Logits plus the named auxiliaries the trainer logs and optimises.

  Attributes:
    logits: `[B, C]`.
    aux_loss_B: the method's own regulariser per example, already weighted
      (lambda * ATR loss for AdaTape, tau * ponder cost for ACT); the
      training loss adds its batch mean. Zeros for models without one.
    tape_length_B: valid tape tokens per example (AdaTape).
    tape_mask_BxT: which tape slots are valid (AdaTape).
    atr_loss_B: unweighted ATR loss (AdaTape).
    ponder_cost_B: mean over valid tokens of N + R (ACT models).
    ponder_steps_B: mean over valid tokens of N (ACT models); layers used
      (A-ViT, ALBERT-ACT); the halting step (PonderNet); learners used per
      token and module (ACM).
    flops_B: analytic forward FLOPs of the encoder per example, counting
      only the work the method's decisions require (tokens still running,
      tape tokens read, learners chosen) plus its own overhead (reader,
      halting units, gates, routers); see `models/flops.py`.
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
  tape_length_B: jax.Array | None = None
  tape_mask_BxT: jax.Array | None = None
  atr_loss_B: jax.Array | None = None
  ponder_cost_B: jax.Array | None = None
  ponder_steps_B: jax.Array | None = None
  flops_B: jax.Array | None = None
  token_depth_BxL: jax.Array | None = None
  step_logits_SxBxC: jax.Array | None = None
  step_log_probs_BxS: jax.Array | None = None
  bank_reads_BxM: jax.Array | None = None
