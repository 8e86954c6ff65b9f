"""Optimizer: the official schedule's values and the weight-decay mask."""

import contextlib
import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adatape import models
from adatape import optim
from adatape import parallel
from adatape import run_config
from adatape import train
from configs.parity import adatape as parity_adatape
from experiments import global_norm_ab


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


def test_global_norm_is_the_norm_of_all_leaves_together():
  rng = np.random.default_rng(0)
  # Two leaves of one shape (stacked together), a bfloat16 leaf, a
  # scalar, and an empty one.
  tree = {
      "kernel": rng.normal(size=(37, 61)).astype(np.float32),
      "other": rng.normal(size=(37, 61)).astype(np.float32) * 3,
      "bias": rng.normal(size=(5,)).astype(np.float32) * 1e3,
      "half": jnp.asarray(rng.normal(size=(3, 7)), jnp.bfloat16),
      "scale": np.float32(-2.5),
      "none": np.zeros((0, 4), np.float32),
  }
  exact = math.sqrt(
      sum(float((np.asarray(x, np.float64) ** 2).sum()) for x in tree.values())
  )
  norm = optim.global_norm(tree)
  assert norm.dtype == jnp.float32
  np.testing.assert_allclose(float(norm), exact, rtol=1e-6)
  assert float(optim.global_norm({})) == 0.0


def test_clip_by_global_norm_follows_optax():
  rng = np.random.default_rng(1)
  grads = {
      "w": jnp.asarray(rng.normal(size=(40, 30)), jnp.float32),
      "b": jnp.asarray(rng.normal(size=(30,)), jnp.float32),
  }
  norm = float(optim.global_norm(grads))
  # Above the threshold (rescaled to it) and below it (untouched).
  for max_norm in (norm / 3, norm * 2):
    ours = optim.clip_by_global_norm(max_norm)
    theirs = optax.clip_by_global_norm(max_norm)
    got, _ = ours.update(grads, ours.init(grads))
    want, _ = theirs.update(grads, theirs.init(grads))
    for key in grads:
      np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        float(optim.global_norm(got)), min(norm, max_norm), rtol=1e-5
    )


def test_clip_sees_only_trainable_leaves():
  # Under `optim.trainable`, the norm that clips is that of the updated
  # leaves: a huge frozen gradient must not shrink the trained one.
  tx = optim.create(
      optim.Config(
          learning_rate=1.0,
          b1=0.0,
          b2=0.0,
          schedule="constant",
          clip_norm=1.0,
          name="sgd",
          trainable="head",
      ),
      10,
  )
  params = {"head": jnp.zeros((2,)), "body": jnp.zeros((2,))}
  grads = {"head": jnp.asarray([0.3, 0.4]), "body": jnp.asarray([1e6, 1e6])}
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["head"], [-0.3, -0.4], rtol=1e-6)
  np.testing.assert_array_equal(updates["body"], [0.0, 0.0])


@pytest.mark.parametrize("data, model", [(8, 1), (4, 2)])
def test_global_norm_gathers_nothing_from_split_gradients(data, model):
  # Under FSDP and tensor parallelism each leaf is split its own way
  # (parallel.leaf_spec); the norm must reduce them where they lie, with
  # nothing but a scalar's all-reduce between devices. Laid end to end in
  # one vector, the leaves were all-gathered.
  mesh_config = parallel.Config(data=data, model=model, sharding="fsdp")
  mesh = parallel.make_mesh(mesh_config)
  shapes = {
      "encoderblock_0/mlp/Dense_0/kernel": (16, 64),
      "encoderblock_0/mlp/Dense_1/kernel": (64, 16),
      "encoderblock_1/mlp/Dense_0/kernel": (16, 64),
      "encoderblock_0/attention/query/kernel": (16, 4, 4),
      "encoderblock_0/attention/key/kernel": (16, 4, 4),
      "encoderblock_0/mlp/Dense_0/bias": (64,),
      "encoderblock_0/norm_mlp/scale": (16,),
      "head/bias": (3,),
  }
  rng = np.random.default_rng(2)
  grads = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
  shardings = {
      k: jax.sharding.NamedSharding(
          mesh, parallel.leaf_spec(k, s, mesh, fsdp=True)
      )
      for k, s in shapes.items()
  }
  assert len({s.spec for s in shardings.values()}) > 2  # Split every way.
  norm = jax.jit(optim.global_norm, in_shardings=(shardings,))
  hlo = norm.lower(grads).compile().as_text()
  for collective in ("all-gather", "all-to-all", "collective-permute"):
    assert collective not in hlo
  exact = math.sqrt(
      sum(float((g.astype(np.float64) ** 2).sum()) for g in grads.values())
  )
  np.testing.assert_allclose(float(norm(grads)), exact, rtol=1e-6)


def test_train_step_with_the_grouped_norm_equals_optax():
  # The same step taken with optax's per-leaf norm (as before
  # optim.global_norm) and with ours, clipping active: the same logged
  # norm and the same new parameters, to float tolerance.
  config = parity_adatape.get_config("tiny")
  shape = (config.data.seq_len, 3)
  model = models.build(config, input_shape=shape, num_classes=2)
  opt = optim.Config(learning_rate=0.1, schedule="constant", clip_norm=1e-3)
  rng = np.random.default_rng(3)
  batch = {
      "inputs": jnp.asarray(rng.integers(0, 2, (8,) + shape), jnp.float32),
      "label": jnp.asarray(rng.integers(0, 2, (8,))),
  }
  results = []
  for context in (global_norm_ab.optax_norm(), contextlib.nullcontext()):
    with context:
      tx = optim.create(opt, 10)
      state = train.init_state(
          jax.random.key(0), model=model, tx=tx, input_shape=shape
      )
      step = _jitted_step(model, tx, opt, config)
      results.append(step(state, batch))
  old, old_metrics = results[0]
  new, new_metrics = results[1]
  assert optim.global_norm is not optax.tree.norm  # Restored.
  norm = float(new_metrics["train/grad_norm"])
  assert norm > 1e-3  # The clip acted.
  np.testing.assert_allclose(
      norm, float(old_metrics["train/grad_norm"]), rtol=1e-6
  )
  for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(old.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def _jitted_step(model, tx, opt, config):
  """The trainer's train step, jitted, for a 10-step schedule."""
  return jax.jit(
      functools.partial(
          train.train_step,
          model=model,
          tx=tx,
          lr_fn=optim.schedule(opt, 10),
          loss=config.loss,
      )
  )


def test_the_clip_and_the_logged_norm_are_one_computation():
  # The train step asks for the gradients' norm twice (to clip, and as
  # train/grad_norm); both ask optim.global_norm, so XLA computes it once:
  # two scalar square roots traced, one compiled.
  config = parity_adatape.get_config("tiny")
  shape = (config.data.seq_len, 3)
  model = models.build(config, input_shape=shape, num_classes=2)
  opt = optim.Config(learning_rate=0.1, schedule="constant", clip_norm=1.0)
  tx = optim.create(opt, 10)
  state = jax.eval_shape(
      lambda: train.init_state(
          jax.random.key(0), model=model, tx=tx, input_shape=shape
      )
  )
  batch = {
      "inputs": jax.ShapeDtypeStruct((8,) + shape, jnp.float32),
      "label": jax.ShapeDtypeStruct((8,), jnp.int32),
  }
  step = _jitted_step(model, tx, opt, config)
  lowered = step.lower(state, batch)
  traced = re.findall(r"stablehlo.sqrt %\S+ : tensor<f32>", lowered.as_text())
  compiled = re.findall(r"f32\[\] sqrt\(", lowered.compile().as_text())
  assert (len(traced), len(compiled)) == (2, 1)
