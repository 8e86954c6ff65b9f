"""Universal Transformer with Adaptive Computation Time (Dehghani et al. 2019).

One shared pre-LN block is applied up to `encoder.depth` times. Before each
application a learned step embedding is added; a halting unit (Dense -> 1,
zero kernel, bias `halting_bias_init`) reads the stepped state, per token or
per example, and `adatape.halting` turns the probabilities into output
weights. As in tensor2tensor, the next state is the block output for every
token, halted or not (halted tokens keep serving as keys); only the output
accumulator is frozen for them. The regulariser is the mean ponder cost
N + R over valid tokens, weighted by `act_loss_weight`.

The reported FLOPs are a lower bound: each step counts the queries of the
tokens still running (against every key), as the ACT papers do, while the
block as specified also updates the halted tokens, whose states keep
serving as keys. They count what the halting decisions save at best.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from adatape import halting
from adatape import layers
from adatape import run_config
from adatape.models import encoder
from adatape.models import flops
from adatape.models import outputs
from adatape.models import stems

ACT_LEVELS = ("per_token", "per_example")

METRICS = (
    outputs.Metric("act_steps", "steps/token", "steps", cost=True),
    outputs.Metric("ponder_cost", "ponder cost N + R per token"),
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(stems.ClassifierConfig):
  """Universal Transformer settings beyond the shared classifier fields.

  `encoder.depth` is the maximum number of steps of the shared block.

  Attributes:
    act_level: "per_token" or "per_example" halting.
    act_type: "basic" (EMA blend) or "accumulated" (Graves' mean field).
    act_epsilon: halt once the cumulative probability exceeds 1 - epsilon.
    halting_bias_init: initial halting logit (t2t: 1.0, scenic UViT: -1.0).
    act_loss_weight: tau, weight of the ponder cost.
  """

  act_level: str = "per_token"
  act_type: str = "basic"
  act_epsilon: float = 0.01
  halting_bias_init: float = 1.0
  act_loss_weight: float = 0.01

  def __post_init__(self):
    super().__post_init__()
    run_config.check_choice("model.act_level", self.act_level, ACT_LEVELS)
    run_config.check_choice("model.act_type", self.act_type, halting.ACT_TYPES)
    run_config.check(
        0.0 < self.act_epsilon < 1.0,
        f"model.act_epsilon={self.act_epsilon} must be in (0, 1)",
    )
    run_config.check(
        self.act_loss_weight >= 0,
        f"model.act_loss_weight={self.act_loss_weight} must be " ">= 0",
    )

  def make_block(self, name: str) -> nn.Module:
    """The shared block; Hyper-UT overrides it with a generated-weight FFN."""
    return encoder.EncoderBlock(self.encoder, name=name)

  def step_flops(self, tokens_B: jax.Array, keys_B: jax.Array) -> jax.Array:
    """FLOPs of one step for `tokens_B` running tokens per example (a lower
    bound: halted tokens' updates are not counted)."""
    enc = self.encoder
    return flops.block(enc.width, enc.mlp_dim, tokens_B, keys_B) + flops.dense(
        enc.width, 1, tokens_B
    )


class _Step(nn.Module):
  """One ACT step of the shared block; scanned over steps."""

  config: Config
  train: bool

  @nn.compact
  def __call__(self, carry, step_index):
    cfg = self.config
    state_BxLxD, output_BxLxD, act, mask_BxL, flops_B = carry
    step_embed = self.param(
        "step_embedding",
        nn.initializers.normal(0.02),
        (cfg.encoder.depth, cfg.encoder.width),
    )
    stepped = state_BxLxD + step_embed[step_index].astype(state_BxLxD.dtype)
    halting_unit = nn.Dense(
        1,
        kernel_init=nn.initializers.zeros,
        bias_init=nn.initializers.constant(cfg.halting_bias_init),
        dtype=jnp.float32,
        name="halting",
    )
    if cfg.act_level == "per_token":
      prob = nn.sigmoid(halting_unit(stepped)[..., 0])
    else:
      prob = nn.sigmoid(
          halting_unit(layers.masked_mean(stepped, mask_BxL))[..., 0]
      )
    keys_B = mask_BxL.sum(1).astype(jnp.float32)
    running = halting.running(act)
    tokens_B = running.sum(1) if running.ndim == 2 else running * keys_B
    flops_B = flops_B + cfg.step_flops(tokens_B, keys_B)
    act, weight = halting.step(
        act,
        prob,
        epsilon=cfg.act_epsilon,
        is_last=step_index == cfg.encoder.depth - 1,
    )
    new_state = cfg.make_block("block")(
        stepped, mask_BxL, num_main=stepped.shape[1], train=self.train
    )
    weight_b = weight[..., None] if weight.ndim == 2 else weight[:, None, None]
    # The output accumulates in float32 whatever the model's dtype.
    output_BxLxD = halting.accumulate(
        output_BxLxD,
        new_state.astype(output_BxLxD.dtype),
        weight_b,
        cfg.act_type,
    )
    return (new_state, output_BxLxD, act, mask_BxL, flops_B), None


class Model(nn.Module):
  """Stem -> ACT loop over one shared block -> LayerNorm -> pool -> head."""

  config: Config

  @nn.compact
  def __call__(self, inputs: jax.Array, *, train: bool) -> outputs.ModelOutput:
    cfg = self.config
    enc = cfg.encoder
    x = cfg.make_stem()(inputs, train=train)
    mask_BxL = jnp.ones(x.shape[:2], bool)
    shape = x.shape[:2] if cfg.act_level == "per_token" else x.shape[:1]
    # Fully unrolled: the loop is short (the maximum depth), and on CPU the
    # rolled loop ran the block at ~3/4 of the speed (291 vs 223 ms per
    # parity step), and hid its FLOPs from XLA's cost analysis.
    scan = nn.scan(
        _Step,
        variable_broadcast="params",
        variable_axes={"intermediates": 0},
        split_rngs={"params": False, "dropout": True},
        length=enc.depth,
        unroll=enc.depth,
    )
    carry = (
        x,
        jnp.zeros(x.shape, jnp.float32),
        halting.init(shape),
        mask_BxL,
        jnp.zeros(x.shape[:1], jnp.float32),
    )
    (_, out, act, _, flops_B), _ = scan(cfg, train, name="act")(
        carry, jnp.arange(enc.depth)
    )
    logits = cfg.classify(out, mask_BxL)
    cost = halting.ponder_cost(act)
    steps = act.updates
    depth_BxL = (
        steps
        if cfg.act_level == "per_token"
        else jnp.broadcast_to(steps[:, None], mask_BxL.shape)
    )
    if cfg.act_level == "per_token":
      weights = mask_BxL.astype(jnp.float32)
      cost = (cost * weights).sum(1) / weights.sum(1)
      steps = (steps * weights).sum(1) / weights.sum(1)
    return outputs.ModelOutput(
        logits=logits,
        aux_loss_B=cfg.act_loss_weight * cost,
        flops_B=flops_B,
        metrics_B={"act_steps": steps, "ponder_cost": cost},
        token_depth_BxL=depth_BxL,
    )
