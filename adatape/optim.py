"""Optimizer and learning-rate schedule from the `optim.*` config keys.

The official AdaTape/ViT ImageNet recipe (`configs/imagenet/`): AdamW (b1 0.9, b2 0.999, decoupled weight
decay multiplied by the learning rate, applied to every parameter), linear
warmup then cosine decay to zero, global-norm clipping at 1.0. Clipping
happens on the global gradient, which under jit is already the mean over all
devices.
"""

import dataclasses
import re

import flax
import jax
import jax.numpy as jnp
import optax

from adatape import run_config

SCHEDULES = ("cosine", "linear", "constant")
DECAY_MASKS = ("all", "kernels")
OPTIMIZERS = ("adamw", "sgd")
MU_DTYPES = ("", "bfloat16")


@dataclasses.dataclass(frozen=True)
class Config:
  """`optim.*` keys.

  Attributes:
    name: "adamw" (pre-training) or "sgd" (SGD with momentum b1, the ViT
      paper's fine-tuning optimizer; weight decay is then added to the
      gradient).
    learning_rate: peak learning rate.
    warmup_steps: linear warmup from 0.
    schedule: after warmup, "cosine" or "linear" (both to 0 at
      total_steps), or "constant".
    weight_decay: decoupled AdamW weight decay.
    b1: Adam beta1.
    b2: Adam beta2.
    clip_norm: global gradient-norm clip (0: off).
    decay_mask: "all" parameters (official) or only "kernels" (matrices and
      the learnable bank; no biases, LayerNorms or embeddings' scales).
    trainable: if set, a regular expression; only parameters whose path
      ("encoderblock_0/acm/gate/Dense_0/kernel") it matches are updated, the
      others stay fixed (no update, no weight decay). Empty: all.
    mu_dtype: the dtype of Adam's first moment: "" (that of the
      parameters, float32) or "bfloat16" (half its memory, as big_vision
      allows); the second moment stays float32.
  """

  name: str = "adamw"
  learning_rate: float = 1e-3
  warmup_steps: int = 0
  schedule: str = "cosine"
  weight_decay: float = 0.0
  b1: float = 0.9
  b2: float = 0.999
  clip_norm: float = 1.0
  decay_mask: str = "all"
  trainable: str = ""
  mu_dtype: str = ""

  def __post_init__(self):
    check = run_config.check
    check(
        self.learning_rate > 0,
        f"optim.learning_rate={self.learning_rate} must be > 0",
    )
    check(
        self.warmup_steps >= 0,
        f"optim.warmup_steps={self.warmup_steps} must be >= 0",
    )
    run_config.check_choice("optim.name", self.name, OPTIMIZERS)
    run_config.check_choice("optim.schedule", self.schedule, SCHEDULES)
    run_config.check_choice("optim.decay_mask", self.decay_mask, DECAY_MASKS)
    run_config.check_choice("optim.mu_dtype", self.mu_dtype, MU_DTYPES)
    check(
        self.weight_decay >= 0,
        f"optim.weight_decay={self.weight_decay} must be >= 0",
    )
    check(
        0 <= self.b1 < 1 and 0 <= self.b2 < 1,
        "optim.b1 and optim.b2 must be in [0, 1)",
    )
    check(self.clip_norm >= 0, f"optim.clip_norm={self.clip_norm} must be >= 0")
    try:
      re.compile(self.trainable)
    except re.error as e:
      raise run_config.ConfigError(
          f"optim.trainable={self.trainable!r} is not a regular expression: "
          f"{e}"
      ) from None


def schedule(config: Config, total_steps: int) -> optax.Schedule:
  """lr(g) = peak * min(1, g / warmup) * decay((g - warmup) / (total -
  warmup)), decay = cosine, linear or 1."""
  warmup = min(config.warmup_steps, total_steps)
  ramp = optax.linear_schedule(0.0, config.learning_rate, max(warmup, 1))
  if config.schedule == "constant":
    return optax.join_schedules(
        [ramp, optax.constant_schedule(config.learning_rate)], [warmup]
    )
  if config.schedule == "linear":
    return optax.join_schedules(
        [
            ramp,
            optax.linear_schedule(
                config.learning_rate, 0.0, max(total_steps - warmup, 1)
            ),
        ],
        [warmup],
    )
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=config.learning_rate,
      warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1),
      end_value=0.0,
  )


def global_norm(tree) -> jax.Array:
  """The L2 norm of all leaves of `tree` together, in float32.

  Leaves of one shape are stacked and reduced together (the 12 layers'
  MLP kernels, their query, key and value kernels, every [D] scale and
  bias: 11 reductions for ViT-S/16's 199 leaves), where optax reduces
  each leaf on its own, a small kernel each on a GPU. On the H200
  one reduction over all leaves laid end to end made ViT-S/16's train
  step 3.0% faster (experiments/results/global_norm_ab_nvidia_h200.txt),
  but laying leaves of different shardings end to end made XLA gather
  them under FSDP and tensor parallelism; leaves of one shape are split
  alike, so their stack needs no collective (tests/test_optim.py). This
  grouped form is not yet timed on a GPU (`experiments/gpu_checks.sh
  flags` does it first). Every caller that asks for the norm of the same
  tree gets the same expression, so the clip and the `train/grad_norm`
  metric share one computation.
  """
  groups = {}
  for leaf in jax.tree.leaves(tree):
    leaf = jnp.asarray(leaf, jnp.float32)
    groups.setdefault(leaf.shape, []).append(leaf)
  total = jnp.zeros((), jnp.float32)
  for leaves in groups.values():
    stack = jnp.stack(leaves)
    # Per leaf, then across: the sums a CPU adds up in sequence stay short.
    total += jnp.sum(jnp.sum(stack * stack, axis=tuple(range(1, stack.ndim))))
  return jnp.sqrt(total)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
  """optax.clip_by_global_norm's rule (gradients rescaled to norm
  `max_norm` when their global norm exceeds it), with `global_norm`."""

  def update(updates, state, params=None):
    del params
    norm = global_norm(updates)
    factor = jnp.where(norm < max_norm, 1.0, max_norm / norm)
    return jax.tree.map(lambda g: g * factor.astype(g.dtype), updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _kernel_mask(params):
  return jax.tree_util.tree_map_with_path(lambda path, p: p.ndim >= 2, params)


def create(config: Config, total_steps: int) -> optax.GradientTransformation:
  """AdamW (or SGD) with the schedule, preceded by global-norm clipping."""
  mask = _kernel_mask if config.decay_mask == "kernels" else None
  lr = schedule(config, total_steps)
  if config.name == "sgd":
    adamw = optax.chain(
        optax.add_decayed_weights(config.weight_decay, mask),
        optax.sgd(lr, momentum=config.b1 or None),
    )
  else:
    adamw = optax.adamw(
        lr,
        b1=config.b1,
        b2=config.b2,
        weight_decay=config.weight_decay,
        mask=mask,
        mu_dtype=config.mu_dtype or None,
    )
  if config.clip_norm:
    adamw = optax.chain(clip_by_global_norm(config.clip_norm), adamw)
  if not config.trainable:
    return adamw
  return optax.multi_transform(
      {"train": adamw, "freeze": optax.set_to_zero()},
      lambda params: _trainable_labels(params, config.trainable),
  )


def _trainable_labels(params, pattern: str):
  """ "train" / "freeze" per leaf; refuses a pattern that matches nothing."""
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  labels = {
      path: "train" if re.search(pattern, path) else "freeze" for path in flat
  }
  run_config.check(
      "train" in labels.values(),
      f"optim.trainable={pattern!r} matches no parameter; paths look like "
      f"{next(iter(flat), '')!r}",
  )
  return flax.traverse_util.unflatten_dict(labels, sep="/")
