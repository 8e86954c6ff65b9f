"""The adaptive-computation baselines: halting invariants, masks, gradients.

PonderNet, A-ViT, ALBERT-ACT, ACM and Hyper-UT, plus the shared halting
primitives and the analytic FLOP counts all of them report.
"""

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from adatape import halting
from adatape import losses
from adatape import models
from adatape import run_config
from adatape import train
from adatape.models import acm
from adatape.models import flops
from adatape.models import outputs


def _build(name, input_shape=(9, 5), num_classes=4, **model):
  c = ml_collections.ConfigDict()
  c.model = dict(
      dict(name=name, width=16, depth=3, num_heads=2, mlp_dim=32), **model
  )
  if name == "adatape":
    # K = T / epsilon = 3 candidates per step: K * T = 9 = the bank.
    c.tape = dict(num_tokens=3, epsilon=1.0)
  return models.build(c, input_shape=input_shape, num_classes=num_classes)


def _inputs(batch, shape=(9, 5), seed=0):
  return (
      np.random.default_rng(seed)
      .normal(size=(batch,) + shape)
      .astype(np.float32)
  )


def _init(model, x, seed=0):
  return model.init(
      {"params": jax.random.key(seed), "halting": jax.random.key(seed)},
      x[:1],
      train=False,
  )


def _apply(model, variables, x, train_mode=False, seed=0, **kw):
  return model.apply(
      variables,
      x,
      train=train_mode,
      rngs={
          "dropout": jax.random.key(seed),
          "halting": jax.random.key(seed + 1),
      },
      **kw,
  )


def _set(variables, path, value):
  flat = flax.traverse_util.flatten_dict(variables["params"], sep="/")
  assert path in flat, sorted(flat)
  flat[path] = jnp.broadcast_to(value, flat[path].shape).astype(
      flat[path].dtype
  )
  return {"params": flax.traverse_util.unflatten_dict(flat, sep="/")}


# Halting primitives.


def test_geometric_halting_hand_case_and_rows_sum_to_one():
  # lambda = 0.5, 0.5, (forced 1): p = 0.5, 0.25, 0.25.
  log_p = halting.geometric_log_probs(jnp.array([[0.0, 0.0, -3.0]]))
  np.testing.assert_allclose(np.exp(log_p), [[0.5, 0.25, 0.25]], rtol=1e-6)
  logits = jax.random.normal(jax.random.key(0), (64, 20)) * 5
  np.testing.assert_allclose(
      np.exp(halting.geometric_log_probs(logits)).sum(-1), 1.0, rtol=1e-5
  )
  # Log space keeps very late steps finite where p.log() would be -inf.
  deep = halting.geometric_log_probs(jnp.full((1, 200), 30.0))
  assert np.all(np.isfinite(deep))


def test_geometric_prior_is_normalised_and_kl_is_zero_at_the_prior():
  log_q = halting.geometric_prior_log_probs(10, 0.2)
  np.testing.assert_allclose(np.exp(log_q).sum(), 1.0, rtol=1e-6)
  q = np.exp(log_q)
  np.testing.assert_allclose(q[1:] / q[:-1], 0.8, rtol=1e-5)
  np.testing.assert_allclose(halting.kl(log_q[None], log_q), [0.0], atol=1e-6)
  other = halting.geometric_log_probs(jnp.zeros((1, 10)))
  assert float(halting.kl(other, log_q)[0]) > 0.01


def test_depth_priors_are_normalised_and_peak_at_the_mean():
  gauss = halting.depth_prior("gaussian", 12, 8.0, 1.0)
  laplace = halting.depth_prior("laplace", 12, 8.0, 1.0)
  for prior in (gauss, laplace):
    np.testing.assert_allclose(prior.sum(), 1.0, rtol=1e-6)
    assert int(prior.argmax()) == 7  # Layer 8, 1-based.
  # Same variance, heavier tails: Laplace puts more mass far away.
  assert float(laplace[0]) > float(gauss[0])


# PonderNet.


def test_pondernet_loss_is_the_expectation_over_steps():
  model = _build("pondernet", halting_bias_init=-1.0)
  x = _inputs(6)
  variables = _init(model, x)
  out = _apply(model, variables, x, train_mode=True)
  labels = jnp.array([0, 1, 2, 3, 0, 1])
  per_step = np.stack(
      [
          np.asarray(losses.task_loss(l, labels, "softmax_xent"))
          for l in out.step_logits_SxBxC
      ]
  )
  expected = (np.exp(np.asarray(out.step_log_probs_BxS)) * per_step.T).sum(-1)
  np.testing.assert_allclose(
      losses.example_loss(out, labels, "softmax_xent"), expected, rtol=1e-5
  )
  np.testing.assert_allclose(
      np.exp(out.step_log_probs_BxS).sum(-1), 1.0, rtol=1e-5
  )
  # bias -1: lambda = 0.269 at every step but the last (forced 1).
  lam = 1 / (1 + np.e)
  np.testing.assert_allclose(
      np.exp(out.step_log_probs_BxS[0]),
      [lam, lam * (1 - lam), (1 - lam) ** 2],
      rtol=1e-5,
  )


def test_pondernet_eval_uses_the_most_likely_or_a_sampled_step():
  x = _inputs(64)
  likely = _build("pondernet", halting_bias_init=0.5)
  variables = _init(likely, x)
  variables = _set(
      variables,
      "halting/kernel",
      jax.random.normal(jax.random.key(3), (16, 1)) * 3,
  )
  out = _apply(likely, variables, x)
  chosen = np.argmax(np.asarray(out.step_log_probs_BxS), -1)
  np.testing.assert_array_equal(out.metrics_B["halting_step"], chosen + 1)
  np.testing.assert_allclose(
      out.logits, np.asarray(out.step_logits_SxBxC)[chosen, np.arange(64)]
  )
  sampler = _build("pondernet", halting_bias_init=0.5, eval_halting="sample")
  sampled = _apply(sampler, variables, x)
  again = _apply(sampler, variables, x)
  np.testing.assert_array_equal(
      sampled.metrics_B["halting_step"], again.metrics_B["halting_step"]
  )
  assert not np.array_equal(
      sampled.metrics_B["halting_step"], out.metrics_B["halting_step"]
  )


# A-ViT.


def _avit_with_controlled_halting():
  """Block 0 is the identity and the stem copies input feature 0 to
  channel 0, so exactly the tokens with a positive feature 0 halt after
  layer 1 (gate_scale 100, centre 0, a CLS token that never halts there)."""
  model = _build(
      "avit",
      classifier="token",
      posemb=False,
      gate_scale=100.0,
      gate_center=0.0,
      distr_weight=0.0,
  )
  x = _inputs(4)
  x[:, :, 0] = np.where(np.arange(9) % 2 == 0, 1.0, -1.0)  # Even tokens halt.
  variables = _init(model, x)
  p = "encoderblock_0"
  for path in (
      f"{p}/attention/out/kernel",
      f"{p}/attention/out/bias",
      f"{p}/mlp/Dense_1/kernel",
      f"{p}/mlp/Dense_1/bias",
  ):
    variables = _set(variables, path, 0.0)
  kernel = np.array(variables["params"]["stem"]["embedding"]["kernel"])
  kernel[:, 0] = 0.0
  kernel[0, 0] = 1.0
  variables = _set(variables, "stem/embedding/kernel", kernel)
  variables = _set(variables, "stem/embedding/bias", 0.0)
  head = jax.random.normal(jax.random.key(5), (16, 4))
  variables = _set(variables, "head/output_projection/kernel", head)
  return model, variables, x


def test_avit_halted_tokens_do_not_influence_other_tokens():
  model, variables, x = _avit_with_controlled_halting()
  out = _apply(model, variables, x)
  depth = np.asarray(out.token_depth_BxL)[:, 1:]  # Drop the CLS token.
  np.testing.assert_array_equal(depth[:, ::2], 1.0)  # Halted after layer 1.
  assert np.all(depth[:, 1::2] > 1)
  # The CLS output only reads other tokens after layer 1: changing what a
  # halted token holds must not move it; changing a running token must.
  halted, running = x.copy(), x.copy()
  halted[:, 2, 1:] += 5.0
  running[:, 3, 1:] += 5.0
  np.testing.assert_allclose(
      _apply(model, variables, halted).logits, out.logits, atol=1e-6
  )
  assert (
      np.abs(_apply(model, variables, running).logits - out.logits).max() > 1e-3
  )


def test_avit_halting_weights_sum_to_one_and_ponder_cost():
  model = _build("avit", gate_center=1.0, gate_scale=5.0)
  x = _inputs(8)
  variables = _init(model, x)
  out, inter = _apply(model, variables, x, mutable=["intermediates"])
  weights = np.stack(inter["intermediates"]["halting_weights"])  # [L, B, T]
  np.testing.assert_allclose(weights.sum(0), 1.0, rtol=1e-5)
  # A token's weights are zero after the layer it halted at.
  depth = np.asarray(out.token_depth_BxL)
  for layer in range(3):
    assert np.all(weights[layer][depth < layer + 1] == 0)
  assert depth.min() >= 1 and depth.max() <= 3
  # Ponder cost N + R lies in [N, N + 1) per token, so its mean does too.
  cost, layers = out.metrics_B["ponder_cost"], out.metrics_B["layers_used"]
  assert np.all(cost >= layers) and np.all(cost < layers + 1)
  # FLOPs count only the tokens that ran each layer: one layer per depth
  # unit, all 9 tokens as keys at most.
  per_token = flops.block(16, 32, 9)
  assert np.all(out.flops_B <= depth.sum(1) * per_token / 9 + 1e-3)


# ALBERT-ACT.


def test_albert_act_halted_tokens_are_frozen_exactly():
  model = _build("albert_act", depth=5, halting_bias_init=-0.5)
  x = _inputs(6)
  variables = _init(model, x)
  variables = _set(
      variables, "halting/kernel", jax.random.normal(jax.random.key(2), (16, 1))
  )
  out, inter = _apply(model, variables, x, mutable=["intermediates"])
  states = np.stack(inter["intermediates"]["states"])
  halted = np.stack(inter["intermediates"]["halted"])
  depth = np.asarray(out.token_depth_BxL)
  assert len(np.unique(depth)) > 1, "want tokens halting at various steps"
  frozen = 0
  for n in range(1, 5):
    was = halted[n - 1]
    np.testing.assert_array_equal(states[n][was], states[n - 1][was])
    frozen += int(was.sum())
    still = ~halted[n - 1]
    assert np.all(np.abs(states[n][still] - states[n - 1][still]).max(-1) > 0)
  assert frozen > 0
  # `updates` counts the steps each token took before it froze.
  first_halted = np.argmax(halted, axis=0) + 1
  np.testing.assert_array_equal(depth, first_halted)


# ACM.


def test_acm_learner_outputs_are_cumulative_sums():
  module = acm.Learners(num_learners=4, hidden=3, detach="detach")
  z = jnp.asarray(_inputs(2, (5, 8)))
  variables = module.init(jax.random.key(0), z)
  variables = _set(
      variables, "bias", jax.random.normal(jax.random.key(1), (5, 8))
  )
  h = np.asarray(module.apply(variables, z))
  p = variables["params"]
  w1 = np.asarray(p["w1"]).reshape(8, 4, 3)
  w2 = np.asarray(p["w2"]).reshape(4, 3, 8)
  bias = np.asarray(p["bias"])
  # k = 0 skips the learners: only the choice's own bias, as officially.
  np.testing.assert_allclose(h[:, :, 0], np.broadcast_to(bias[0], (2, 5, 8)))
  for k in range(1, 5):
    total = sum(
        np.asarray(
            jax.nn.gelu(np.asarray(z) @ w1[:, n] + np.asarray(p["b1"][n]))
        )
        @ w2[n]
        for n in range(k)
    )
    np.testing.assert_allclose(
        h[:, :, k], total + bias[: k + 1].sum(0), rtol=1e-4, atol=1e-5
    )


def test_acm_detach_sends_each_choice_gradient_to_its_own_learner():
  module = acm.Learners(num_learners=3, hidden=4, detach="detach")
  z = jnp.asarray(_inputs(1, (2, 6)))
  variables = module.init(jax.random.key(0), z)
  grads = jax.grad(lambda v: module.apply(v, z)[:, :, 2].sum())(variables)
  w1 = np.abs(np.asarray(grads["params"]["w1"])).reshape(6, 3, 4).sum((0, 2))
  assert w1[1] > 0 and w1[0] == 0 and w1[2] == 0


def test_acm_no_detach_sends_each_choice_gradient_to_all_its_learners():
  module = acm.Learners(num_learners=3, hidden=4, detach="no_detach")
  z = jnp.asarray(_inputs(1, (2, 6)))
  variables = module.init(jax.random.key(0), z)
  grads = jax.grad(lambda v: module.apply(v, z)[:, :, 2].sum())(variables)
  w1 = np.abs(np.asarray(grads["params"]["w1"])).reshape(6, 3, 4).sum((0, 2))
  assert w1[0] > 0 and w1[1] > 0 and w1[2] == 0


def test_avit_prior_loss_from_mean_halting_scores_by_hand():
  # Two layers, one example of three tokens, the last one padding (its
  # scores must not count); a second example shows the mean is per example.
  scores_LxBxT = jnp.array(
      [[[0.2, 0.4, 0.9], [0.5, 0.5, 0.0]], [[0.6, 1.0, 0.9], [0.5, 0.5, 0.0]]]
  )
  valid_BxT = jnp.array([[1, 1, 0], [1, 1, 0]])
  target_L = jnp.array([0.25, 0.75])
  loss_B = halting.halting_score_prior_loss(scores_LxBxT, valid_BxT, target_L)
  # Example 0: h = (0.3, 0.8), normalised (3/11, 8/11).
  expected = 0.25 * np.log(0.25 / (3 / 11)) + 0.75 * np.log(0.75 / (8 / 11))
  np.testing.assert_allclose(loss_B[0], expected, rtol=1e-5)
  # Example 1: h = (0.5, 0.5) -> (0.5, 0.5).
  expected = 0.25 * np.log(0.25 / 0.5) + 0.75 * np.log(0.75 / 0.5)
  np.testing.assert_allclose(loss_B[1], expected, rtol=1e-5)
  # Clipped to [0.01, 0.99] as the official code: a layer with h = 0.
  zero = halting.halting_score_prior_loss(
      jnp.array([[[0.0]], [[1.0]]]), jnp.array([[1]]), target_L
  )
  np.testing.assert_allclose(
      zero[0], 0.25 * np.log(25.0) + 0.75 * np.log(0.75 / 0.99), rtol=1e-5
  )


def test_avit_laplace_and_gaussian_priors_give_different_losses():
  x = _inputs(4)
  losses = {}
  for prior in ("gaussian", "laplace"):
    model = _build(
        "avit",
        gate_center=1.0,
        gate_scale=5.0,
        ponder_weight=0.0,
        distr_prior=prior,
        target_depth=2.0,
    )
    variables = _init(model, x)
    losses[prior] = np.asarray(_apply(model, variables, x).aux_loss_B)
  assert np.all(losses["gaussian"] > 0) and np.all(losses["laplace"] > 0)
  assert np.abs(losses["gaussian"] - losses["laplace"]).max() > 1e-4


def test_acm_gate_labels_follow_the_official_rule():
  # Errors for choices k = 0..4 (K = 4) and their ratios e_j / e_{j+1}.
  errors = jnp.array(
      [
          [8.0, 2.0, 1.818, 0.909, 0.909],  # 4, 1.1, 2, 1: j = 1 -> label 2
          [8.0, 4.0, 2.0, 1.8, 0.9],  # 2, 2, 1.11, 2: j = 2 -> label 3
          [8.0, 4.0, 2.0, 1.0, 0.5],  # 2, 2, 2, 2: none -> K
          [1.0, 1.0, 0.5, 0.25, 0.125],  # 1, 2, 2, 2: j = 0 -> K, officially
      ]
  )
  np.testing.assert_array_equal(acm.gate_labels(errors, 1.2), [2, 3, 4, 4])


def test_acm_finetune_output_uses_the_chosen_learners_and_grads_reach_gates():
  model = _build("acm", stage="finetune", num_learners=4, depth=2)
  x = _inputs(4)
  variables = _init(model, x)
  labels = jnp.array([0, 1, 2, 3])

  def task_loss(v):
    out = _apply(model, v, x, train_mode=True)
    return losses.task_loss(out.logits, labels, "softmax_xent").mean()

  head = jax.random.normal(jax.random.key(9), (16, 4))
  variables = _set(variables, "head/output_projection/kernel", head)
  grads = jax.grad(task_loss)(variables)
  gate = grads["params"]["encoderblock_0"]["gate"]
  assert float(optax_norm(gate)) > 0
  # Forcing every gate to k = 0 skips the MLPs: learners then don't matter.
  skip = variables
  for i in range(2):
    skip = _set(
        skip,
        f"encoderblock_{i}/gate/Dense_2/bias",
        jnp.array([100.0, 0, 0, 0, 0]),
    )
  out = _apply(model, skip, x)
  np.testing.assert_array_equal(out.metrics_B["learners_used"], 0.0)
  other = _set(skip, "encoderblock_0/learners/w2", 1.0)
  np.testing.assert_allclose(_apply(model, other, x).logits, out.logits)
  assert float(out.flops_B[0]) == pytest.approx(
      2 * (flops.attention(16, 9, 9) + 9 * (2 * (16 * 16 + 16 * 16 + 16 * 5)))
  )


def optax_norm(tree):
  return jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(tree)))


def test_acm_distill_stage_trains_only_the_learners():
  import optax  # pylint: disable=g-import-not-at-top
  from adatape import optim  # pylint: disable=g-import-not-at-top

  model = _build("acm", stage="distill", depth=2)
  x = _inputs(4)
  variables = _init(model, x)
  config = optim.Config(learning_rate=1e-2, trainable="/learners/")
  tx = optim.create(config, 10)
  state = train.TrainState(
      step=jnp.zeros((), jnp.int32),
      params=variables["params"],
      opt_state=tx.init(variables["params"]),
      rng=jax.random.key_data(jax.random.key(0)),
  )
  new, _ = train.train_step(
      state,
      {"inputs": x, "label": jnp.zeros(4, int)},
      model=model,
      tx=tx,
      lr_fn=optim.schedule(config, 10),
      loss="softmax_xent",
  )
  before = flax.traverse_util.flatten_dict(state.params, sep="/")
  after = flax.traverse_util.flatten_dict(new.params, sep="/")
  changed = {k for k in before if not np.array_equal(before[k], after[k])}
  assert changed and all("/learners/" in k for k in changed)
  assert any("/learners/w1" in k for k in changed)
  with pytest.raises(run_config.ConfigError, match="optim.trainable"):
    optim.create(optim.Config(trainable="nothing_matches"), 10).init(
        variables["params"]
    )
  del optax


# Hyper-UT.


def test_hyper_ut_hypernetwork_generates_weights_per_example_and_step():
  model = _build("hyper_ut", router_dim=8, hyper_dim=4, halting_bias_init=-3.0)
  x = _inputs(5)
  variables = _init(model, x)
  out, inter = _apply(model, variables, x, mutable=["intermediates"])
  z = np.asarray(jax.tree.leaves(inter["intermediates"])[0])
  assert z.shape == (3, 5, 4)  # [steps, B, hyper_dim]
  assert np.abs(z - z[:, :1]).max() > 1e-3  # Examples differ.
  assert np.abs(z - z[:1]).max() > 1e-3  # Steps differ.
  alone = _apply(model, variables, x[2:3])
  np.testing.assert_allclose(alone.logits[0], out.logits[2], atol=1e-5)
  grads = jax.grad(
      lambda v: _apply(model, v, x, train_mode=True).logits[:, 0].sum()
  )(_set(variables, "head/output_projection/kernel", 1.0))
  block = grads["params"]["act"]["block"]
  for name in ("hyper_w1", "hyper_w2"):
    # Every row of the hypernetwork (each embedding dimension) learns.
    assert np.all(np.abs(np.asarray(block[name])).sum(1) > 0), name
  assert float(np.abs(block["router"]["kernel"]).sum()) > 0
  assert float(np.abs(block["embedding"]["kernel"]).sum()) > 0


def test_hyper_ut_charges_generation_for_the_steps_taken():
  # A halting bias of 10: every token halts after its first step.
  model = _build("hyper_ut", router_dim=8, hyper_dim=4, halting_bias_init=10.0)
  x = _inputs(2)
  out = _apply(model, _init(model, x), x)
  d, f, tokens = 16, 32, 9
  one_step = (
      flops.block(d, f, tokens)
      + flops.dense(d, 1, tokens)  # halting unit
      + 2 * d * 8
      + 2 * 8 * 4  # router and weight embedding
      + 2 * 4 * 2 * d * f  # W1 and W2 from the 4-number embedding
  )
  np.testing.assert_allclose(out.flops_B, one_step, rtol=1e-6)


def test_hyper_ut_mixture_generates_different_weights_per_example():
  model = _build("hyper_ut", generator="mixture", pool_size=3, router_dim=8)
  x = _inputs(5)
  variables = _init(model, x)
  out, inter = _apply(model, variables, x, mutable=["intermediates"])
  alpha = np.asarray(jax.tree.leaves(inter["intermediates"])[0])
  assert alpha.shape == (3, 5, 3)  # [steps, B, pool]
  np.testing.assert_allclose(alpha.sum(-1), 1.0, rtol=1e-5)
  assert np.abs(alpha - alpha[:, :1]).max() > 1e-4  # Examples differ.
  # Batch independence: an example alone gives the same output.
  alone = _apply(model, variables, x[2:3])
  np.testing.assert_allclose(alone.logits[0], out.logits[2], atol=1e-5)
  grads = jax.grad(
      lambda v: _apply(model, v, x, train_mode=True).logits[:, 0].sum()
  )(_set(variables, "head/output_projection/kernel", 1.0))
  pool = grads["params"]["act"]["block"]["pool_w1"]
  assert np.all(np.abs(np.asarray(pool)).sum((1, 2)) > 0)  # Every entry.
  assert float(np.abs(grads["params"]["act"]["block"]["router_keys"]).sum()) > 0


# Shared: every method, batch independence and reported compute.


@pytest.mark.parametrize(
    "name",
    [
        "adatape",
        "pondernet",
        "avit",
        "albert_act",
        "acm",
        "hyper_ut",
        "universal_transformer",
        "transformer",
    ],
)
def test_every_method_is_batch_independent_and_reports_flops(name):
  model = _build(name)
  x = _inputs(6)
  variables = _init(model, x)
  variables = _set(
      variables,
      "head/output_projection/kernel",
      jax.random.normal(jax.random.key(4), (16, 4)),
  )
  out = _apply(model, variables, x)
  assert isinstance(out, outputs.ModelOutput)
  assert np.abs(np.asarray(out.logits)).max() > 0.1  # The check can fail.
  for b in (0, 4):
    alone = _apply(model, variables, x[b : b + 1])
    np.testing.assert_allclose(alone.logits[0], out.logits[b], atol=1e-5)
    np.testing.assert_allclose(alone.flops_B[0], out.flops_B[b], rtol=1e-6)
  full = 3 * flops.block(16, 32, 9)
  assert np.all(out.flops_B > 0)
  if name == "transformer":
    np.testing.assert_allclose(out.flops_B, full)


def test_adatape_flops_grow_with_tape_length():
  c = ml_collections.ConfigDict()
  c.model = dict(name="adatape", width=16, depth=2, num_heads=2, mlp_dim=32)
  c.tape = dict(num_tokens=4, epsilon=1.0, layers=(1,), key_split=2)
  model = models.build(c, input_shape=(16, 3), num_classes=2)
  x = np.eye(3, dtype=np.float32)[
      np.random.default_rng(0).integers(0, 3, (64, 16))
  ]
  variables = model.init({"params": jax.random.key(0)}, x[:1], train=False)
  out = model.apply(variables, x, train=False)
  lengths = np.asarray(out.metrics_B["tape_length"])
  assert len(np.unique(lengths)) > 1
  order = np.argsort(lengths)
  assert np.all(np.diff(np.asarray(out.flops_B)[order]) >= 0)
  # By hand (a multiply-add is 2 FLOPs; D = 16, F = 32, M = 16 bank
  # entries of 3 features, key width D / key_split = 8, K = T / eps = 4):
  t = int(lengths[0])
  bank = 2 * 3 * 16 * 16  # one Dense per sequence element
  # Each reading step emits one token: scores of the 16 entries at the key
  # width, then the merge of K = 4 candidates' values (16) and keys (8).
  read = t * (2 * 8 * 16 + 2 * 4 * (16 + 8))

  # One main token: block 0 sees 1 token, block 1 sees 1 + t tokens.
  def block(n):
    return n * (8 * 16**2 + 4 * 16 * 32) + 4 * n * n * 16

  expected = bank + read + block(1) + block(1 + t)
  np.testing.assert_allclose(out.flops_B[0], expected, rtol=1e-6)


@pytest.mark.parametrize(
    "name, key, value, match",
    [
        ("pondernet", "lambda_p", 1.5, "model.lambda_p"),
        ("pondernet", "eval_halting", "mean", "model.eval_halting"),
        ("avit", "distr_prior", "cauchy", "model.distr_prior"),
        ("albert_act", "time_penalty", -1.0, "model.time_penalty"),
        ("acm", "num_learners", 5, "model.num_learners"),
        ("acm", "stage", "teacher", "model.stage"),
        ("hyper_ut", "pool_size", 0, "model.pool_size"),
        ("hyper_ut", "generator", "moe", "model.generator"),
    ],
)
def test_bad_method_configs_are_rejected(name, key, value, match):
  with pytest.raises(run_config.ConfigError, match=match):
    _build(name, **{key: value})
