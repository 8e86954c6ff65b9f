"""Model sections of the adaptive-computation baselines, shared by tasks.

Each task family (`configs/parity/`, `configs/pvr/`) has one file per
method that takes its data, budget and encoder size from the family's
`common.py` and its method keys from here, so that a method is configured
the same way on every task and every method of a task trains on the same
data with the same budget. The values are the official/reference ones
(the papers' or their reference code's) unless a comment says otherwise.
"""

import dataclasses
from typing import Callable

import ml_collections

from adatape import run_config
from adatape.tape import config as tape_config

ModelFn = Callable[..., ml_collections.ConfigDict]


def tape(*, key_split: int, **overrides) -> ml_collections.ConfigDict:
  """AdaTape's `tape` section: every key of `TapeConfig` at its default
  (the official configuration: the input-driven bank, adaptive reading
  with the entropy ATR loss at weight 0.01, a gap query, the tape
  appended before block 1), with the task's `overrides` (its budget,
  num_tokens and epsilon, at least).

  Args:
    key_split: s, the official configuration's number of heads.
    **overrides: other `tape.*` keys.
  """
  defaults = dataclasses.asdict(tape_config.TapeConfig())
  unknown = sorted(set(overrides) - set(defaults))
  run_config.check(
      not unknown,
      f"tape.{unknown[0] if unknown else ''} is " "not a key of TapeConfig",
  )
  return ml_collections.ConfigDict(
      {**defaults, "key_split": key_split, **overrides}
  )


def universal_transformer(
    model: ModelFn, depth: int, **extra
) -> ml_collections.ConfigDict:
  """UT with per-token ACT, tensor2tensor's values (halting bias 1,
  epsilon 0.01, ponder weight 0.01)."""
  c = model(
      "universal_transformer",
      stem="sequence",
      classifier="gap",
      posemb=True,
      act_level="per_token",
      act_type="basic",
      act_epsilon=0.01,
      halting_bias_init=1.0,
      act_loss_weight=0.01,
      head_bias_init=0.0,
  )
  c.depth = depth
  c.update(extra)
  return c


def hyper_ut(model: ModelFn, depth: int) -> ml_collections.ConfigDict:
  """UT-ACT whose FFN a hypernetwork generates per example and step (an
  8-number weight embedding from a router of width 32); `generator=mixture`
  gives the pool-of-4 mixture instead."""
  c = universal_transformer(
      model,
      depth,
      generator="hypernetwork",
      pool_size=4,
      router_dim=32,
      hyper_dim=8,
  )
  c.name = "hyper_ut"
  return c


def pondernet(model: ModelFn, depth: int) -> ml_collections.ConfigDict:
  """PonderNet with the labml parity values lambda_p = 0.2, beta = 0.01."""
  c = model(
      "pondernet",
      stem="sequence",
      classifier="gap",
      posemb=True,
      lambda_p=0.2,
      beta=0.01,
      halting_bias_init=0.0,
      eval_halting="most_likely",
      head_bias_init=0.0,
  )
  c.depth = depth
  return c


def avit(model: ModelFn, depth: int) -> ml_collections.ConfigDict:
  """A-ViT token halting, trained from scratch.

  The official gate_center (30 or 75) assumes a pretrained DeiT's channel
  scale; from scratch the channel starts near 0, so beta = 3 starts the
  halting score at sigmoid(-3) = 0.05 and lets the prior move it. The
  target depth is the middle of the stack.
  """
  return model(
      "avit",
      stem="sequence",
      classifier="gap",
      posemb=True,
      gate_scale=10.0,
      gate_center=3.0,
      act_epsilon=0.01,
      ponder_weight=5e-4,
      distr_weight=1e-3,
      distr_prior="gaussian",
      target_depth=(depth + 1) / 2,
      target_scale=1.0,
      head_bias_init=0.0,
  )


def albert_act(model: ModelFn, depth: int) -> ml_collections.ConfigDict:
  """ALBERT-ACT with the 'tiny' time penalty 1e-3."""
  c = model(
      "albert_act",
      stem="sequence",
      classifier="gap",
      posemb=True,
      act_epsilon=0.01,
      time_penalty=1e-3,
      halting_bias_init=0.0,
      head_bias_init=0.0,
  )
  c.depth = depth
  return c


# The parameters each ACM stage trains (regular expressions on paths).
ACM_TRAINABLE = {"distill": "/learners/", "gates": "/gate/", "finetune": ""}


def acm(model: ModelFn, stage: str) -> ml_collections.ConfigDict:
  """ACM with the official K = 4, gate and loss weights."""
  return model(
      "acm",
      stem="sequence",
      classifier="gap",
      posemb=True,
      stage=stage,
      num_learners=4,
      gate_hidden=16,
      gumbel_temperature=0.8,
      gate_error_factor=1.2,
      detach="detach",
      budget_target=0.5,
      budget_weight=0.1,
      entropy_weight=0.05,
      diversity_weight=0.05,
      head_bias_init=0.0,
  )


def acm_stage(c: ml_collections.ConfigDict, stage: str, init: str) -> None:
  """Turns a task config into one ACM conversion stage.

  `init` is the previous stage's workdir (the trained Transformer for
  `distill`). Distillation and gate training run for a quarter of the
  task's steps at a constant learning rate with no weight decay, training
  only their own parameters (the official stages 1 and 2 are short too);
  fine-tuning runs the full budget.
  """
  run_config.check_choice("config arg stage", stage, tuple(ACM_TRAINABLE))
  c.init_from = init
  c.optim.trainable = ACM_TRAINABLE[stage]
  if stage != "finetune":
    c.total_steps = max(c.total_steps // 4, 1)
    c.optim.schedule = "constant"
    c.optim.weight_decay = 0.0
