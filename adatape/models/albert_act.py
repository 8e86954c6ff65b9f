"""ALBERT-style per-token ACT depth (Simoulin & Crabbe 2021).

One shared block is iterated up to `encoder.depth` times. Unlike the
Universal Transformer, the halting unit reads the block *output*
(p = sigmoid(Dense(y))), and the carried state is the interpolation
s <- w * y + (1 - w) * s with the ACT weight w of `adatape.halting.step`:
a halted token has w = 0, so its state is frozen exactly, both as the
output and as the key/value other tokens attend to later. Padding starts
halted. The model returns the per-token update counts (`updates`, the
model card's name) as `token_depth_BxL`. The time penalty is
tau * sum over valid tokens of (N + R), per example, as the original.

The block is this codebase's pre-LN block (ALBERT is post-LN), so that
every method here differs only in its adaptive mechanism.
"""

import dataclasses

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
    outputs.Metric("updates", "updates/token", "updates", cost=True),
    outputs.Metric("ponder_cost", "ponder cost N + R per token"),
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(stems.ClassifierConfig):
  """ALBERT-ACT settings; `encoder.depth` is the maximum number of updates.

  Attributes:
    act_epsilon: halting threshold (original: 0.01).
    time_penalty: tau (original: 1e-3 tiny, 5e-4 small, 2.5e-4 base).
    halting_bias_init: initial halting logit (original: 0, so p = 0.5).
  """

  act_epsilon: float = 0.01
  time_penalty: float = 1e-3
  halting_bias_init: float = 0.0

  def __post_init__(self):
    super().__post_init__()
    run_config.check(
        0.0 < self.act_epsilon < 1.0,
        f"model.act_epsilon={self.act_epsilon} must be in (0, 1)",
    )
    run_config.check(
        self.time_penalty >= 0,
        f"model.time_penalty={self.time_penalty} must be >= 0",
    )


class Model(nn.Module):
  """Stem -> shared block iterated with per-token frozen halting -> head."""

  config: Config

  @nn.compact
  def __call__(self, inputs: jax.Array, *, train: bool) -> outputs.ModelOutput:
    cfg = self.config
    enc = cfg.encoder
    state = cfg.make_stem()(inputs, train=train)
    valid_BxL = jnp.ones(state.shape[:2], bool)
    valid = valid_BxL.astype(jnp.float32)
    act = halting.init(state.shape[:2])._replace(halting=1.0 - valid)
    block = encoder.EncoderBlock(enc, name="shared_block")
    halting_unit = nn.Dense(
        1,
        kernel_init=nn.initializers.normal(0.02),
        bias_init=nn.initializers.constant(cfg.halting_bias_init),
        dtype=jnp.float32,
        name="halting",
    )
    flops_B = jnp.zeros(state.shape[:1], jnp.float32)
    for n in range(enc.depth):
      count_B = halting.running(act).sum(1)
      # Halted tokens stay keys (their frozen state), so keys = all valid.
      flops_B += flops.block(
          enc.width, enc.mlp_dim, count_B, valid.sum(1)
      ) + flops.dense(enc.width, 1, count_B)
      y = block(state, valid_BxL, num_main=state.shape[1], train=train)
      prob = nn.sigmoid(halting_unit(y)[..., 0])
      act, weight_BxL = halting.step(
          act, prob, epsilon=cfg.act_epsilon, is_last=n == enc.depth - 1
      )
      w = weight_BxL[..., None].astype(y.dtype)
      state = w * y + (1.0 - w) * state
      # For tests and analysis (`mutable=["intermediates"]`).
      self.sow("intermediates", "states", state)
      self.sow("intermediates", "halted", act.halting >= 1.0)
    logits = cfg.classify(state, valid_BxL)
    cost_sum_B = (halting.ponder_cost(act) * valid).sum(1)
    count_B = valid.sum(1)
    return outputs.ModelOutput(
        logits=logits,
        aux_loss_B=cfg.time_penalty * cost_sum_B,
        flops_B=flops_B,
        metrics_B={
            "updates": (act.updates * valid).sum(1) / count_B,
            "ponder_cost": cost_sum_B / count_B,
        },
        token_depth_BxL=act.updates * valid,
    )
