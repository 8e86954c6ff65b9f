"""A-ViT: adaptive token halting over the layers of a ViT (Yin et al. 2022).

Each token carries ACT state across the L = `encoder.depth` layers (not
shared). After layer l, a token's halting score is read, without new
parameters, from the first channel of its residual state:
h = sigmoid(gamma * x[..., 0] - beta), forced to 1 at the last layer; the
ACT arithmetic is `adatape.halting.step`, so the output is the
halting-weighted mean of the token's states over the layers it ran
(Graves' mean field) and its ponder cost is N + R.

A halted token is zeroed (through `stop_gradient` of the mask, as the
official code's `.data` write), removed from the keys of every later
attention (a key-padding mask, so it cannot influence other tokens), and
its later block outputs are masked too (the ACM authors' fix of A-ViT#13:
the official code lets projection biases leak into halted tokens).

Losses: alpha_p * mean over tokens of (N + R), plus alpha_d * KL(target ||
H), where H is the example's distribution of halting scores over the
layers (h^l, the mean halting score of its tokens at layer l, normalised
over the layers, as in the paper and the official code) and the target a
normalised Gaussian (A-ViT) or Laplace (the AdaViT seed project) around
`target_depth` (`halting.halting_score_prior_loss`). This fixes two
official bugs: the mean over the batch axis instead of tokens (A-ViT#4)
and the unnormalised target.
"""

import dataclasses
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from adatape import halting
from adatape import run_config
from adatape.models import encoder
from adatape.models import flops
from adatape.models import outputs
from adatape.models import stems

METRICS = (
    outputs.Metric("layers_used", "layers/token", "layers", cost=True),
    outputs.Metric("ponder_cost", "ponder cost N + R per token"),
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(stems.ClassifierConfig):
  """A-ViT settings.

  Attributes:
    gate_scale: gamma (official README: 10).
    gate_center: beta (official README: 30 for tiny, 75 for small; those
      assume a pretrained DeiT's channel scale).
    act_epsilon: halting threshold (official: 0.01).
    ponder_weight: alpha_p (official: 5e-4).
    distr_weight: alpha_d (official: 1e-3; 0 switches the prior off).
    distr_prior: "gaussian" (A-ViT) or "laplace" (AdaViT seed project).
    target_depth: the prior's mean, in layers (1-based).
    target_scale: the prior's standard deviation, in layers.
  """

  gate_scale: float = 10.0
  gate_center: float = 30.0
  act_epsilon: float = 0.01
  ponder_weight: float = 5e-4
  distr_weight: float = 1e-3
  distr_prior: str = "gaussian"
  target_depth: float = 8.0
  target_scale: float = 1.0

  def __post_init__(self):
    super().__post_init__()
    check = run_config.check
    check(
        0.0 < self.act_epsilon < 1.0,
        f"model.act_epsilon={self.act_epsilon} must be in (0, 1)",
    )
    for name in ("ponder_weight", "distr_weight"):
      value = getattr(self, name)
      check(value >= 0, f"model.{name}={value} must be >= 0")
    run_config.check_choice(
        "model.distr_prior", self.distr_prior, halting.DEPTH_PRIORS
    )
    check(
        self.target_scale > 0,
        f"model.target_scale={self.target_scale} must be > 0",
    )


class Halted(NamedTuple):
  """What the L halting layers leave (`halting_layers`)."""

  out_BxLxD: jax.Array  # Halting-weighted mean of each token's states.
  act: halting.ActState
  scores: list[jax.Array]  # Per layer, [B, L] halting scores.
  weights: list[jax.Array]  # Per layer, [B, L] output weights.
  flops_B: jax.Array  # Analytic FLOPs of the blocks, running tokens only.


def halting_layers(
    cfg: Config,
    x_BxLxD: jax.Array,
    valid_BxL: jax.Array,
    run_block: Callable[[int, jax.Array, jax.Array], jax.Array],
) -> Halted:
  """The L blocks with per-token halting, each block run by
  `run_block(layer, x_BxLxD, active_BxL)`: the model's runs it on every
  token (halted ones masked), elastic inference (`adatape/elastic.py`) on
  the running tokens only. A halted token is zero and masked, so both give
  the same result."""
  enc = cfg.encoder
  # Padding starts halted, so it never runs and never serves as a key.
  act = halting.init(x_BxLxD.shape[:2])._replace(
      halting=1.0 - valid_BxL.astype(jnp.float32)
  )
  out_BxLxD = jnp.zeros(x_BxLxD.shape, jnp.float32)  # Accumulated in f32.
  weights, scores = [], []
  flops_B = jnp.zeros(x_BxLxD.shape[:1], jnp.float32)
  x = x_BxLxD
  for layer in range(enc.depth):
    active_BxL = halting.running(act)
    x = x * jax.lax.stop_gradient(active_BxL)[..., None].astype(x.dtype)
    y = run_block(layer, x, active_BxL)
    x = y * active_BxL[..., None].astype(y.dtype)
    count_B = active_BxL.sum(1)
    flops_B += flops.block(enc.width, enc.mlp_dim, count_B)
    score = nn.sigmoid(
        cfg.gate_scale * x[..., 0].astype(jnp.float32) - cfg.gate_center
    )
    scores.append(score)
    act, weight_BxL = halting.step(
        act, score, epsilon=cfg.act_epsilon, is_last=layer == enc.depth - 1
    )
    out_BxLxD = halting.accumulate(
        out_BxLxD, x.astype(jnp.float32), weight_BxL[..., None], "accumulated"
    )
    weights.append(weight_BxL)
  return Halted(out_BxLxD, act, scores, weights, flops_B)


class Model(nn.Module):
  """Stem -> L blocks with per-token halting -> LN -> pool -> head."""

  config: Config

  @nn.compact
  def __call__(self, inputs: jax.Array, *, train: bool) -> outputs.ModelOutput:
    cfg = self.config
    enc = cfg.encoder
    x = cfg.make_stem()(inputs, train=train)
    valid_BxL = jnp.ones(x.shape[:2], bool)
    valid = valid_BxL.astype(jnp.float32)

    def run_block(layer, x, active_BxL):
      return encoder.EncoderBlock(enc, name=f"encoderblock_{layer}")(
          x, active_BxL > 0, num_main=x.shape[1], train=train
      )

    out_BxLxD, act, scores, weights, flops_B = halting_layers(
        cfg, x, valid_BxL, run_block
    )
    for weight_BxL in weights:
      self.sow("intermediates", "halting_weights", weight_BxL)
    logits = cfg.classify(out_BxLxD, valid_BxL)

    count_B = valid.sum(1)
    cost_B = (halting.ponder_cost(act) * valid).sum(1) / count_B
    depth_B = (act.updates * valid).sum(1) / count_B
    target_L = halting.depth_prior(
        cfg.distr_prior, enc.depth, cfg.target_depth, cfg.target_scale
    )
    distr_B = halting.halting_score_prior_loss(
        jnp.stack(scores), valid, target_L
    )
    return outputs.ModelOutput(
        logits=logits,
        aux_loss_B=cfg.ponder_weight * cost_B + cfg.distr_weight * distr_B,
        flops_B=flops_B,
        metrics_B={"layers_used": depth_B, "ponder_cost": cost_B},
        token_depth_BxL=act.updates * valid,
    )
