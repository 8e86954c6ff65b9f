"""PonderNet (Banino et al. 2021) over a shared Transformer block.

A shared pre-LN block is applied up to S = `encoder.depth` times. After
step n the pooled state gives a prediction y_n and a conditional halting
probability lambda_n (per example). The unconditional halting distribution
p_n = lambda_n prod_{j<n}(1 - lambda_j), truncated by forcing lambda_S = 1,
comes from `halting.geometric_log_probs`, in log space. Training minimises
the expected task loss sum_n p_n L(y_n) (the trainer reads
`step_logits_SxBxC` and `step_log_probs_BxS`) plus beta * KL(p || geometric
prior(lambda_p)), the prior renormalised over the S steps.

At evaluation the prediction is y at the most likely halting step
(`eval_halting=most_likely`) or at a step sampled from p
(`eval_halting=sample`, PonderNet's inference rule, from the fixed
`halting` key the eval step supplies). Compute is reported for the step
actually used: n blocks over all tokens plus n halting units; in training,
for the expected step.
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

EVAL_HALTING = ("most_likely", "sample")

# In training the expected halting step under p; at evaluation the step
# whose prediction is used.
METRICS = (outputs.Metric("halting_step", "steps", "step", cost=True),)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(stems.ClassifierConfig):
  """PonderNet settings; `encoder.depth` is the maximum number of steps.

  Attributes:
    lambda_p: the geometric prior's halting probability (expected steps
      about 1 / lambda_p).
    beta: weight of KL(p || prior).
    halting_bias_init: initial halting logit.
    eval_halting: "most_likely" or "sample".
  """

  lambda_p: float = 0.2
  beta: float = 0.01
  halting_bias_init: float = 0.0
  eval_halting: str = "most_likely"

  def __post_init__(self):
    super().__post_init__()
    run_config.check(
        0.0 < self.lambda_p < 1.0,
        f"model.lambda_p={self.lambda_p} must be in (0, 1)",
    )
    run_config.check(self.beta >= 0, f"model.beta={self.beta} must be >= 0")
    run_config.check_choice(
        "model.eval_halting", self.eval_halting, EVAL_HALTING
    )


class Model(nn.Module):
  """Stem -> S steps of a shared block, each with a prediction and lambda."""

  config: Config

  @nn.compact
  def __call__(self, inputs: jax.Array, *, train: bool) -> outputs.ModelOutput:
    cfg = self.config
    enc = cfg.encoder
    num_steps = enc.depth
    x = cfg.make_stem()(inputs, train=train)
    mask_BxL = jnp.ones(x.shape[:2], bool)
    step_embed = self.param(
        "step_embedding", nn.initializers.normal(0.02), (num_steps, enc.width)
    )
    block = encoder.EncoderBlock(enc, name="block")
    norm = nn.LayerNorm(dtype=enc.compute_dtype, name="encoder_norm")
    head = encoder.Head(cfg.num_classes, cfg.head_bias_init, name="head")
    halting_unit = nn.Dense(
        1,
        kernel_init=nn.initializers.zeros,
        bias_init=nn.initializers.constant(cfg.halting_bias_init),
        dtype=jnp.float32,
        name="halting",
    )
    step_logits, halt_logits = [], []
    for n in range(num_steps):
      x = block(
          x + step_embed[n].astype(x.dtype),
          mask_BxL,
          num_main=x.shape[1],
          train=train,
      )
      pooled_BxD = encoder.pool(
          norm(x).astype(jnp.float32), mask_BxL, cfg.classifier
      )
      step_logits.append(head(pooled_BxD))
      halt_logits.append(halting_unit(pooled_BxD)[:, 0])
    step_logits_SxBxC = jnp.stack(step_logits)
    log_p_BxS = halting.geometric_log_probs(jnp.stack(halt_logits, axis=1))
    log_prior_S = halting.geometric_prior_log_probs(num_steps, cfg.lambda_p)
    kl_B = halting.kl(log_p_BxS, log_prior_S)

    step_number_S = jnp.arange(1, num_steps + 1, dtype=jnp.float32)
    if train:
      chosen_B = jnp.argmax(log_p_BxS, axis=-1)
      steps_B = jnp.exp(log_p_BxS) @ step_number_S
    else:
      if cfg.eval_halting == "sample":
        chosen_B = jax.random.categorical(
            self.make_rng("halting"), log_p_BxS, axis=-1
        )
      else:
        chosen_B = jnp.argmax(log_p_BxS, axis=-1)
      steps_B = (chosen_B + 1).astype(jnp.float32)
    logits = jnp.take_along_axis(
        step_logits_SxBxC, chosen_B[None, :, None], axis=0
    )[0]
    tokens = x.shape[1]
    per_step = flops.block(enc.width, enc.mlp_dim, tokens) + flops.dense(
        enc.width, 1, 1
    )
    return outputs.ModelOutput(
        logits=logits,
        aux_loss_B=cfg.beta * kl_B,
        flops_B=steps_B * per_step,
        metrics_B={"halting_step": steps_B},
        step_logits_SxBxC=step_logits_SxBxC,
        step_log_probs_BxS=log_p_BxS,
    )
