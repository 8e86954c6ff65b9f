"""Models: batch independence, masks respected, gradients, ACT invariants."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from adatape import halting
from adatape import layers
from adatape import models
from adatape import run_config
from adatape.models import encoder


def _config(name, tape=None, **model):
  c = ml_collections.ConfigDict()
  c.model = dict(
      dict(name=name, width=32, depth=3, num_heads=4, mlp_dim=64), **model
  )
  if tape is not None:
    c.tape = dict(
        dict(num_tokens=8, epsilon=2.0, layers=(1,), key_split=4), **tape
    )
  return c


def _parity_inputs(batch, length=32, seed=0):
  values = np.random.default_rng(seed).integers(0, 3, (batch, length))
  return np.eye(3, dtype=np.float32)[values]


def _init_apply(model, x, seed=0):
  variables = model.init({"params": jax.random.key(seed)}, x[:1], train=False)
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  return variables, apply


def _random_head(variables, seed=1):
  """The head is zero-initialised; a random one lets logits show features."""
  kernel = variables["params"]["head"]["output_projection"]["kernel"]
  head = {
      "output_projection": {
          "kernel": jax.random.normal(jax.random.key(seed), kernel.shape),
          "bias": variables["params"]["head"]["output_projection"]["bias"],
      }
  }
  return {"params": {**variables["params"], "head": head}}


@pytest.mark.parametrize(
    "model_kw, tape_kw",
    [
        (dict(stem="flatten"), dict()),
        (
            dict(stem="flatten", classifier="token"),
            dict(mlp_dim=16, encoder_mlp_dim=16, layers=(0, 2)),
        ),
        (dict(stem="flatten"), dict(bank="learn", bank_size=64)),
    ],
)
def test_adatape_example_alone_equals_example_in_batch(model_kw, tape_kw):
  model = models.build(
      _config("adatape", tape=tape_kw, **model_kw),
      input_shape=(32, 3),
      num_classes=2,
  )
  x = _parity_inputs(16)
  variables, apply = _init_apply(model, x)
  # The head starts at zero, which would make every logit 0 and the check
  # below unable to fail.
  variables = _random_head(variables)
  batched = apply(variables, x)
  assert np.abs(np.asarray(batched.logits)).max() > 0.1
  for b in (0, 5, 15):
    alone = apply(variables, x[b : b + 1])
    assert int(alone.metrics_B["tape_length"][0]) == int(
        batched.metrics_B["tape_length"][b]
    )
    # Logits of size ~10: float reassociation between batch shapes moves
    # them by ~1e-5; a leak between examples moves them by far more.
    np.testing.assert_allclose(
        alone.logits[0], batched.logits[b], rtol=1e-5, atol=1e-4
    )
  # A different batch around the same example changes nothing either.
  shuffled = apply(
      variables, np.concatenate([x[5:6], _parity_inputs(7, 32, 1)])
  )
  np.testing.assert_allclose(
      shuffled.logits[0], batched.logits[5], rtol=1e-5, atol=1e-4
  )


def test_padded_positions_do_not_change_valid_outputs():
  cfg = encoder.EncoderConfig(width=16, depth=1, num_heads=2, mlp_dim=32)
  block = encoder.EncoderBlock(cfg, tape_mlp_dim=8)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 10, 16)).astype(np.float32)
  mask = np.ones((3, 10), bool)
  mask[:, 7:] = False
  mask[1, 5:] = False
  variables = block.init(jax.random.key(0), x, mask, num_main=6, train=False)

  def run(x):
    return block.apply(variables, x, mask, num_main=6, train=False)

  noisy = np.where(mask[..., None], x, rng.normal(size=x.shape) * 100)
  out, out_noisy = np.asarray(run(x)), np.asarray(run(noisy))
  np.testing.assert_array_equal(out[mask], out_noisy[mask])
  np.testing.assert_array_equal(
      layers.masked_mean(out, mask), layers.masked_mean(out_noisy, mask)
  )
  # Unmasked noise does change the output: the test can fail.
  assert not np.allclose(run(noisy * 0 + x + 1.0)[mask], out[mask])


def test_atr_gradient_reaches_every_example_through_the_model():
  model = models.build(
      _config("adatape", tape={}, stem="flatten"),
      input_shape=(32, 3),
      num_classes=2,
  )
  x = _parity_inputs(8)
  variables, _ = _init_apply(model, x)

  def atr(x):
    # Training mode: at inference the reader's loop exits early, a
    # while_loop without reverse-mode gradients.
    return model.apply(variables, x, train=True).metrics_B["atr_loss"].sum()

  grad = np.asarray(jax.grad(atr)(jnp.asarray(x)))
  assert np.all(np.abs(grad).reshape(8, -1).sum(1) > 0)


def test_patch_stem_with_learnable_and_patch_banks():
  image = (
      np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  )
  for bank in ("learn", "input"):
    model = models.build(
        _config(
            "adatape",
            tape=dict(bank=bank, bank_size=40),
            stem="patches",
            patch_size=8,
            bank_patch_size=4,
            posemb=True,
        ),
        input_shape=(32, 32, 3),
        num_classes=5,
    )
    variables, apply = _init_apply(model, image)
    out = apply(variables, image)
    assert out.logits.shape == (2, 5)
    assert out.tape_mask_BxT.shape == (2, 8)
  assert "bank" in variables["params"]
  assert "posembed_input_bank" in variables["params"]["bank"]


def test_universal_transformer_ponder_cost_at_init():
  # Zero halting kernel, bias 1: p = sigmoid(1) = 0.731 at every step, so
  # every token halts at step 2 with remainder 1 - 0.731.
  for level in ("per_token", "per_example"):
    model = models.build(
        _config("universal_transformer", act_level=level),
        input_shape=(16, 3),
        num_classes=2,
    )
    x = _parity_inputs(4, 16)
    variables, apply = _init_apply(model, x)
    out = apply(variables, x)
    p = 1 / (1 + np.exp(-1.0))
    np.testing.assert_allclose(
        out.metrics_B["ponder_cost"], 2 + (1 - p), rtol=1e-6
    )
    np.testing.assert_allclose(out.metrics_B["act_steps"], 2.0)


def test_act_weights_sum_to_one_and_hand_case():
  rng = np.random.default_rng(0)
  probs = rng.uniform(0.0, 0.6, size=(5, 7, 3)).astype(np.float32)
  state = halting.init((7, 3))
  total = np.zeros((7, 3), np.float32)
  for t in range(5):
    state, w = halting.step(state, probs[t], epsilon=0.01, is_last=t == 4)
    total += np.asarray(w)
  np.testing.assert_allclose(total, 1.0, rtol=1e-6)
  # Hand case: p = 0.3, 0.5, 0.4 -> halts at step 3 with R = 1 - 0.8.
  state = halting.init((1,))
  weights = []
  for p in (0.3, 0.5, 0.4):
    state, w = halting.step(state, jnp.array([p]), epsilon=0.01, is_last=False)
    weights.append(float(w[0]))
  np.testing.assert_allclose(weights, [0.3, 0.5, 0.2], rtol=1e-6)
  np.testing.assert_allclose(halting.ponder_cost(state), [3.2], rtol=1e-6)


def test_model_config_errors_name_the_key():
  with pytest.raises(run_config.ConfigError, match="tape.layers"):
    models.build(
        _config("adatape", tape=dict(layers=(5,)), stem="flatten"),
        input_shape=(32, 3),
        num_classes=2,
    )
  with pytest.raises(run_config.ConfigError, match="bank"):
    models.build(
        _config("adatape", tape=dict(num_tokens=16), stem="flatten"),
        input_shape=(16, 3),
        num_classes=2,
    )
  with pytest.raises(run_config.ConfigError, match="model.name"):
    models.build(_config("resnet"), input_shape=(16, 3), num_classes=2)
  with pytest.raises(run_config.ConfigError, match="model.num_heads"):
    models.build(
        _config("transformer", num_heads=5), input_shape=(16, 3), num_classes=2
    )


def test_unknown_model_key_lists_the_valid_ones():
  with pytest.raises(
      run_config.ConfigError, match="model.colour is not a key.*mlp_dim.*posemb"
  ):
    models.build(
        _config("transformer", colour="red"), input_shape=(16, 3), num_classes=2
    )


def test_query_noise_and_bank_dropout_act_only_in_training():
  noisy = models.build(
      _config(
          "adatape",
          tape=dict(query_noise=0.5, bank_dropout=0.3),
          stem="flatten",
      ),
      input_shape=(32, 3),
      num_classes=2,
  )
  clean = models.build(
      _config("adatape", tape={}, stem="flatten"),
      input_shape=(32, 3),
      num_classes=2,
  )
  x = _parity_inputs(8)
  variables, _ = _init_apply(noisy, x)
  variables = _random_head(variables)

  def train_logits(model, seed):
    return np.asarray(
        model.apply(
            variables, x, train=True, rngs={"dropout": jax.random.key(seed)}
        ).logits
    )

  # Deterministic given the key, different across keys, off at eval.
  np.testing.assert_array_equal(train_logits(noisy, 1), train_logits(noisy, 1))
  assert not np.allclose(train_logits(noisy, 1), train_logits(noisy, 2))
  assert not np.allclose(train_logits(noisy, 1), train_logits(clean, 1))
  np.testing.assert_array_equal(
      noisy.apply(variables, x, train=False).logits,
      clean.apply(variables, x, train=False).logits,
  )


def test_act_output_updates():
  out, value = jnp.full((2,), 3.0), jnp.full((2,), 10.0)
  weight = jnp.array([0.25, 0.0])
  np.testing.assert_allclose(
      halting.accumulate(out, value, weight, "accumulated"), [5.5, 3.0]
  )
  np.testing.assert_allclose(
      halting.accumulate(out, value, weight, "basic"), [4.75, 3.0]
  )
  x = _parity_inputs(4, 16)
  logits = {}
  for act_type in halting.ACT_TYPES:
    model = models.build(
        _config(
            "universal_transformer", act_type=act_type, halting_bias_init=-1.0
        ),
        input_shape=(16, 3),
        num_classes=2,
    )
    variables, apply = _init_apply(model, x)
    logits[act_type] = np.asarray(apply(_random_head(variables), x).logits)
  # With bias -1 several steps get non-zero weight, and the EMA blend and
  # the mean field combine those steps differently.
  assert all(np.all(np.isfinite(v)) for v in logits.values())
  assert not np.allclose(logits["basic"], logits["accumulated"])


def test_per_element_dense_is_the_batched_dense_with_the_same_parameters():
  # The sequence stem and bank run their Dense on [B * L, C] rows (a CPU
  # speed-up); parameters, values and gradients must stay those of the
  # batched form, so checkpoints saved before keep loading.
  x = jnp.asarray(_parity_inputs(8, length=5))

  class Batched(nn.Module):

    @nn.compact
    def __call__(self, x):
      return nn.Dense(16, name="embed")(x)

  class Rows(nn.Module):

    @nn.compact
    def __call__(self, x):
      return layers.per_element(nn.Dense(16, name="embed"), x)

  params = Batched().init(jax.random.key(0), x)
  rows_params = Rows().init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, rows_params)
  g = jax.random.normal(jax.random.key(1), (8, 5, 16))

  def loss(module):
    return lambda p: jnp.sum(module.apply(p, x) * g)

  np.testing.assert_allclose(
      Rows().apply(params, x), Batched().apply(params, x), atol=1e-6
  )
  assert Rows().apply(params, x).shape == (8, 5, 16)
  grads = jax.grad(loss(Rows()))(params)
  expected = jax.grad(loss(Batched()))(params)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("patch, dtype", [(2, None), (4, None), (4, "bf16")])
def test_patch_embed_is_the_strided_conv_with_the_same_parameters(patch, dtype):
  # The patch stem and bank embed by a matmul of the patches (a GPU
  # speed-up) where they used nn.Conv: the same tree, initial values,
  # outputs and gradients, so checkpoints saved before keep loading.
  dtype = jnp.bfloat16 if dtype else None
  image = jax.random.normal(jax.random.key(2), (3, 8, 12, 3))
  conv = nn.Conv(
      5, (patch, patch), strides=(patch, patch), padding="VALID", dtype=dtype
  )
  embed = layers.PatchEmbed(5, patch, dtype=dtype)
  params = conv.init(jax.random.key(0), image)
  embed_params = embed.init(jax.random.key(0), image)
  assert jax.tree.map(lambda a: a.dtype, embed_params) == jax.tree.map(
      lambda a: a.dtype, params
  )
  for a, b in zip(jax.tree.leaves(embed_params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  # A bias that is not zero, so that it is seen to be added once.
  params = jax.tree.map(lambda p: p + 0.1, params)
  out = embed.apply(params, image)
  assert out.shape == (3, 8 // patch, 12 // patch, 5)
  assert out.dtype == (dtype or jnp.float32)
  tol = 2e-2 if dtype else 1e-5
  np.testing.assert_allclose(
      np.float32(out), np.float32(conv.apply(params, image)), atol=tol
  )
  g = jax.random.normal(jax.random.key(1), out.shape)

  def loss(module):
    return lambda p: jnp.sum(module.apply(p, image).astype(jnp.float32) * g)

  grads = jax.grad(loss(embed))(params)
  expected = jax.grad(loss(conv))(params)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(expected)):
    assert a.dtype == jnp.float32
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize(
    "platform, exit_early, loops",
    [
        ("cpu", "auto", True),
        ("gpu", "auto", False),
        ("gpu", "always", True),
        ("cpu", "never", False),
    ],
)
def test_inference_reads_with_the_early_exit_where_it_is_taken(
    monkeypatch, platform, exit_early, loops
):
  # `auto` exits early only on the platforms where the while_loop was not
  # the slower (on the H200 it was); training always runs the static scan.
  model = models.build(
      _config("adatape", tape=dict(exit_early=exit_early), stem="flatten"),
      input_shape=(32, 3),
      num_classes=2,
  )
  x = _parity_inputs(4)
  variables = model.init({"params": jax.random.key(0)}, x[:1], train=False)
  monkeypatch.setattr(layers, "platform", lambda: platform)
  infer = jax.make_jaxpr(lambda v: model.apply(v, x, train=False))(variables)
  assert ("while[" in str(infer)) == loops
  trained = jax.make_jaxpr(
      lambda v: model.apply(
          v, x, train=True, rngs={"dropout": jax.random.key(1)}
      )
  )(variables)
  assert "while[" not in str(trained)


def test_exit_early_takes_only_its_choices():
  with pytest.raises(run_config.ConfigError, match="tape.exit_early=True"):
    models.build(
        _config("adatape", tape=dict(exit_early=True), stem="flatten"),
        input_shape=(32, 3),
        num_classes=2,
    )
