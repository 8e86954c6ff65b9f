"""Task losses and accuracy, per example, for every model and label kind.

Labels are class indices `[B]`, or targets `[B, C]`: multi-hot
(multi-label data such as JFT, with `sigmoid_xent`) or soft (mixup). The
trainer, the evaluation of finished runs and the analysis tools all score
a model through these functions, so a change of loss reaches each of them.
"""

import jax
import jax.numpy as jnp
import optax

from adatape.models import outputs

# `sigmoid_xent` sums over classes: the official AdaTape/ViT loss.
LOSSES = ("softmax_xent", "sigmoid_xent")


def task_loss(logits: jax.Array, labels: jax.Array, loss: str) -> jax.Array:
  """Per-example classification loss `[B]` in float32.

  Soft targets with softmax_xent are normalised to sum to one.
  """
  logits = logits.astype(jnp.float32)
  if labels.ndim == 1:
    if loss == "softmax_xent":
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    labels = jax.nn.one_hot(labels, logits.shape[-1])
  targets = labels.astype(jnp.float32)
  if loss == "sigmoid_xent":
    return optax.sigmoid_binary_cross_entropy(logits, targets).sum(-1)
  targets = targets / jnp.maximum(targets.sum(-1, keepdims=True), 1e-9)
  return optax.softmax_cross_entropy(logits, targets)


def top1_correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Whether the top class is right, `[B]`; for `[B, C]` targets, whether
  it is one of the example's positive classes (precision@1)."""
  top = logits.argmax(-1)
  if labels.ndim == 1:
    return top == labels
  return jnp.take_along_axis(labels, top[:, None], axis=-1)[:, 0] > 0


def example_loss(
    out: outputs.ModelOutput, labels: jax.Array, loss: str
) -> jax.Array:
  """The training task loss per example `[B]`.

  For a model with a halting distribution over steps (PonderNet) it is the
  expected loss, sum_n p_n * loss(step n's logits); otherwise the loss of
  `out.logits`.
  """
  if out.step_logits_SxBxC is None:
    return task_loss(out.logits, labels, loss)
  per_step_SxB = jax.vmap(lambda l: task_loss(l, labels, loss))(
      out.step_logits_SxBxC
  )
  return jnp.sum(jnp.exp(out.step_log_probs_BxS) * per_step_SxB.T, axis=-1)
