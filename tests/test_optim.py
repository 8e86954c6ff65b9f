"""Optimizer: the official schedule's values and the weight-decay mask."""

import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adatape import optim
from adatape import run_config


def test_schedule_matches_the_official_formula():
  # Spec 4.2: lr(g) = 1e-3 min(1, g/10k) (1 + cos(pi (g - 10k) / 83.6k)) / 2.
  config = optim.Config(learning_rate=1e-3, warmup_steps=10_000)
  lr = optim.schedule(config, 93_600)

  def official(g):
    warm = min(1.0, g / 10_000)
    decay = 0.5 * (1 + math.cos(math.pi * max(0, g - 10_000) / 83_600))
    return 1e-3 * warm * decay

  for g in (0, 5_000, 10_000, 50_000, 93_599):
    np.testing.assert_allclose(float(lr(g)), official(g), rtol=1e-5, atol=1e-12)


def test_constant_schedule_after_warmup():
  lr = optim.schedule(
      optim.Config(learning_rate=0.1, warmup_steps=10, schedule="constant"),
      1000,
  )
  np.testing.assert_allclose(
      [float(lr(g)) for g in (0, 5, 10, 999)], [0.0, 0.05, 0.1, 0.1], rtol=1e-6
  )


def test_linear_schedule_decays_to_zero_after_warmup():
  # The ViT paper's JFT pre-training schedule.
  lr = optim.schedule(
      optim.Config(learning_rate=0.1, warmup_steps=10, schedule="linear"), 110
  )
  np.testing.assert_allclose(
      [float(lr(g)) for g in (0, 5, 10, 60, 110)],
      [0.0, 0.05, 0.1, 0.05, 0.0],
      rtol=1e-6,
      atol=1e-9,
  )


def test_sgd_is_momentum_sgd_on_the_schedule():
  tx = optim.create(
      optim.Config(
          name="sgd",
          learning_rate=0.1,
          b1=0.5,
          schedule="constant",
          clip_norm=0.0,
      ),
      10,
  )
  params = {"w": jnp.zeros(())}
  state = tx.init(params)
  moves = []
  for _ in range(2):
    updates, state = tx.update({"w": jnp.ones(())}, state, params)
    moves.append(float(updates["w"]))
  # Momentum 0.5: the second update is 0.1 * (1 + 0.5).
  np.testing.assert_allclose(moves, [-0.1, -0.15], rtol=1e-6)


def test_kernel_decay_mask_spares_biases():
  params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}}
  grads = {"dense": {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros((2,))}}
  for mask, bias_moves in (("all", True), ("kernels", False)):
    tx = optim.create(
        optim.Config(
            learning_rate=0.1,
            weight_decay=1.0,
            decay_mask=mask,
            schedule="constant",
        ),
        10,
    )
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    assert float(new["dense"]["kernel"][0, 0]) < 1.0
    assert (float(new["dense"]["bias"][0]) < 1.0) == bias_moves


def test_bad_optimizer_config_is_rejected():
  with pytest.raises(run_config.ConfigError, match="optim.learning_rate"):
    optim.Config(learning_rate=0.0)
  with pytest.raises(run_config.ConfigError, match="optim.schedule"):
    optim.Config(schedule="step")
  with pytest.raises(run_config.ConfigError, match="optim.name"):
    optim.Config(name="lamb")
