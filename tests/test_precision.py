"""Mixed precision and fused attention: `model.dtype`, `model.attention`.

bfloat16 keeps 8 bits of mantissa (a relative error of about 0.4% per
operation), so logits of a 3-block model agree with float32 to within 0.05
here (ACM's hard gate may also pick another learner count for a token).
Parameters, optimizer state, tape reading, halting and the loss stay
float32.
"""

import os
import subprocess
import sys
import types

import flax.linen as nn
import jax

# jax's cuDNN attention wrapper, whose hardware probes the tests stub to run
# its shape checks without a GPU.
from jax._src.cudnn import fused_attention_stablehlo as jax_cudnn
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from adatape import layers
from adatape import models
from adatape import optim
from adatape import run_config
from adatape.models import encoder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BF16_TOLERANCE = 0.05


def _config(name, dtype, **extra):
  c = ml_collections.ConfigDict()
  c.model = dict(
      name=name,
      width=32,
      depth=3,
      num_heads=4,
      mlp_dim=64,
      dtype=dtype,
      stem="flatten" if name == "adatape" else "sequence",
      **extra,
  )
  if name == "adatape":
    c.model.posemb = False
    c.tape = dict(num_tokens=4, epsilon=2.0, key_split=4)
  return c


def _inputs(batch=8, length=12):
  rng = np.random.default_rng(0)
  return jax.nn.one_hot(rng.integers(0, 3, (batch, length)), 3)


def _with_random_head(variables):
  """A non-zero head (it is zero-initialised), so logits carry signal."""

  def perturb(path, leaf):
    if "head" in jax.tree_util.keystr(path):
      return leaf + 0.05 * jax.random.normal(jax.random.key(3), leaf.shape)
    return leaf

  return jax.tree_util.tree_map_with_path(perturb, variables)


@pytest.mark.parametrize("name", models.available())
def test_bfloat16_logits_match_float32_and_parameters_stay_float32(name):
  x = _inputs()
  full = models.build(
      _config(name, "float32"), input_shape=(12, 3), num_classes=4
  )
  half = models.build(
      _config(name, "bfloat16"), input_shape=(12, 3), num_classes=4
  )
  rngs = {"params": jax.random.key(0), "halting": jax.random.key(1)}
  variables = _with_random_head(half.init(rngs, x, train=False))
  for leaf in jax.tree.leaves(variables):
    assert leaf.dtype == jnp.float32
  apply_rngs = {"halting": jax.random.key(2)}
  reference = full.apply(variables, x, train=False, rngs=apply_rngs)
  out, state = half.apply(
      variables,
      x,
      train=False,
      rngs=apply_rngs,
      capture_intermediates=True,
      mutable=["intermediates"],
  )
  assert out.logits.dtype == jnp.float32
  assert np.abs(reference.logits).max() > 0.1
  np.testing.assert_allclose(out.logits, reference.logits, atol=BF16_TOLERANCE)
  # The encoder really computes in bfloat16: its attention outputs are.
  attention = [
      v
      for path, v in jax.tree_util.tree_leaves_with_path(state)
      if "attention" in jax.tree_util.keystr(path)
  ]
  assert attention and all(a.dtype == jnp.bfloat16 for a in attention)
  # Metrics are counts (int32) or float32 sums, never bfloat16.
  for value in out.metrics_B.values():
    assert value.dtype in (jnp.float32, jnp.int32)


def test_unread_tape_slots_change_nothing_in_bfloat16():
  c = _config("adatape", "bfloat16")
  # epsilon = 1: each read adds its top weight (>= 1/K) to the halting
  # sum, so an untrained reader already halts after 1-4 tokens.
  c.tape.epsilon = 1.0
  model = models.build(c, input_shape=(16, 3), num_classes=4)
  x = _inputs(16, length=16)
  variables = _with_random_head(
      model.init({"params": jax.random.key(0)}, x, train=False)
  )
  batched = model.apply(variables, x, train=False)
  lengths = np.asarray(batched.metrics_B["tape_length"])
  assert lengths.min() < 4  # Some examples leave slots unread.
  for b in range(4):
    alone = model.apply(variables, x[b : b + 1], train=False)
    np.testing.assert_allclose(alone.logits[0], batched.logits[b], atol=1e-6)
    assert int(alone.metrics_B["tape_length"][0]) == int(lengths[b])


def test_halted_tokens_change_nothing_in_bfloat16():
  model = models.build(
      _config("avit", "bfloat16", gate_center=1.0, gate_scale=5.0),
      input_shape=(12, 3),
      num_classes=4,
  )
  x = _inputs(4)
  variables = model.init({"params": jax.random.key(0)}, x, train=False)
  _, inter = model.apply(variables, x, train=False, mutable=["intermediates"])
  weights = np.stack(inter["intermediates"]["halting_weights"])
  out = model.apply(variables, x, train=False)
  depth = np.asarray(out.token_depth_BxL)
  assert depth.min() < 3  # Some tokens halt early.
  # A token that halted contributes nothing after: its weights are zero.
  for layer in range(3):
    assert np.all(weights[layer][depth < layer + 1] == 0)
  assert np.isfinite(np.asarray(out.logits)).all()


def test_mu_dtype_halves_the_first_moment_only():
  params = {"w": jnp.ones((4, 4), jnp.float32)}
  state = optim.create(optim.Config(mu_dtype="bfloat16"), 10).init(params)
  dtypes = {
      jax.tree_util.keystr(path): leaf.dtype
      for path, leaf in jax.tree_util.tree_leaves_with_path(state)
      if getattr(leaf, "ndim", 0) == 2
  }
  assert any("mu" in k and v == jnp.bfloat16 for k, v in dtypes.items())
  assert any("nu" in k and v == jnp.float32 for k, v in dtypes.items())


def test_fused_attention_equals_flax_attention_with_a_padding_mask():
  rng = np.random.default_rng(0)
  q, k, v = (
      jnp.asarray(rng.normal(size=(3, 7, 2, 8)), jnp.float32) for _ in range(3)
  )
  mask = np.ones((3, 1, 1, 7), bool)
  mask[1, ..., 4:] = False
  mask[2, ..., 2:] = False
  expected = nn.dot_product_attention(q, k, v, mask=mask)
  for attention in ("auto", "xla"):
    got = layers.attention_fn(attention, jnp.float32)(q, k, v, mask=mask)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  # Masked keys do not matter at all.
  noisy = k.at[1, 4:].set(100.0)
  got = layers.attention_fn("xla", jnp.float32)(q, noisy, v, mask=mask)
  np.testing.assert_allclose(got[1], expected[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("masked", ["any", "prefix", "none"])
@pytest.mark.parametrize("t, s", [(7, 7), (6, 6), (5, 8)])
def test_cudnn_arguments_give_the_same_attention_and_gradients(t, s, masked):
  """The arguments cuDNN gets (odd lengths made even; the key mask spread
  over the query rows, or sequence lengths for a prefix mask or none) mean
  the same attention: run through XLA, output and gradients equal the
  plain call's."""
  rng = np.random.default_rng(1)
  q = jnp.asarray(rng.normal(size=(3, t, 2, 8)), jnp.float32)
  k, v = (
      jnp.asarray(rng.normal(size=(3, s, 2, 8)), jnp.float32) for _ in range(2)
  )
  mask = None
  if masked == "any":
    mask = rng.random((3, 1, 1, s)) < 0.6
    mask[..., 0] = True  # Every query sees a key.
  if masked == "prefix":
    mask = np.arange(s) < np.array([1, s // 2, s])[:, None, None, None]
  weights = jnp.asarray(rng.normal(size=(3, t, 2, 8)), jnp.float32)

  def plain(q, k, v):
    out = jax.nn.dot_product_attention(q, k, v, mask=mask)
    return (out * weights).sum(), out

  def prepared(q, k, v):
    qq, kk, vv, kwargs = layers.cudnn_arguments(
        q, k, v, mask, keys_are_prefix=masked == "prefix"
    )
    assert qq.shape[1] % 2 == 0 and kk.shape[1] % 2 == 0
    if masked == "any":
      assert kwargs["mask"].shape == (3, 1, qq.shape[1], kk.shape[1])
    else:  # No bias tensor.
      assert "mask" not in kwargs and (kwargs or (t, s) == (6, 6))
    out = jax.nn.dot_product_attention(qq, kk, vv, **kwargs)[:, :t]
    return (out * weights).sum(), out

  want = jax.grad(plain, argnums=(0, 1, 2), has_aux=True)(q, k, v)
  got = jax.grad(prepared, argnums=(0, 1, 2), has_aux=True)(q, k, v)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", models.available())
def test_every_model_passes_the_checks_of_jax_cudnn_attention(
    name, monkeypatch
):
  """With no GPU here, jax's cuDNN wrapper runs with its hardware probes
  answered by the test (cuDNN 9.1, a supported GPU): its shape checks
  then see what each model gives it, in the train step's gradient and
  the eval forward (traced, never compiled). A
  key-padding mask `[B, 1, 1, L]` passed as is failed them for every model
  ("Bias must have same seq length as QKV"), and an odd length (here 5 for
  AdaTape, 11 for the others) does with a mask in training."""
  monkeypatch.setattr(jax_cudnn, "check_cudnn_version", lambda: 90100)
  monkeypatch.setattr(jax_cudnn, "check_compute_capability", lambda c: True)
  monkeypatch.setattr(layers, "platform", lambda: "gpu")
  attend, biased = jax.nn.dot_product_attention, []

  def recorded(*args, **kwargs):
    biased.append(kwargs.get("mask") is not None)
    return attend(*args, **kwargs)

  monkeypatch.setattr(jax.nn, "dot_product_attention", recorded)
  model = models.build(
      _config(name, "bfloat16", attention="cudnn"),
      input_shape=(11, 3),
      num_classes=4,
  )
  x = _inputs(length=11)
  rngs = {"halting": jax.random.key(1), "dropout": jax.random.key(2)}
  params = jax.eval_shape(
      lambda: model.init({"params": jax.random.key(0), **rngs}, x, train=False)
  )["params"]

  def loss(params):
    out = model.apply({"params": params}, x, train=True, rngs=rngs)
    return out.logits.sum()

  def forward(params):
    return model.apply({"params": params}, x, train=False, rngs=rngs).logits

  train = str(jax.make_jaxpr(jax.grad(loss))(params))
  assert "dot_product_attention_bwd_wrapper" in train
  assert "dot_product_attention_fwd_wrapper" in str(
      jax.make_jaxpr(forward)(params)
  )
  # ViT has nothing to mask and AdaTape's valid keys come first: cuDNN
  # gets lengths there, never a bias tensor.
  assert biased and (name not in ("transformer", "adatape") or not any(biased))


@pytest.mark.parametrize("name", models.available())
def test_the_cudnn_arguments_of_every_model_compute_what_xla_does(
    name, monkeypatch
):
  """Each model with `model.attention=cudnn`, the platform reported as a
  GPU and the cuDNN call itself replaced by XLA's with the same arguments:
  the padding, spread masks and sequence lengths (a prefix taken for
  AdaTape's keys) give the logits of the plain XLA model. AdaTape reads
  tapes of different lengths here, so a wrong prefix would show."""
  monkeypatch.setattr(layers, "platform", lambda: "gpu")
  attend = jax.nn.dot_product_attention

  def as_xla(*args, implementation=None, **kwargs):
    del implementation
    return attend(*args, implementation="xla", **kwargs)

  extra = dict(gate_center=1.0, gate_scale=5.0) if name == "avit" else {}
  # AdaTape's sequence: 1 main token and a tape of 4 slots (odd); the
  # others' 11 tokens.
  length = 16 if name == "adatape" else 11
  built = {}
  for attention in ("xla", "cudnn"):
    c = _config(name, "bfloat16", attention=attention, **extra)
    if name == "adatape":
      c.tape.epsilon = 1.0  # Tapes of 1-4 tokens (see above).
    built[attention] = models.build(c, input_shape=(length, 3), num_classes=4)
  x = _inputs(16, length=length)
  variables = _with_random_head(
      built["xla"].init({"params": jax.random.key(0)}, x, train=False)
  )
  rngs = {"halting": jax.random.key(2)}
  want = built["xla"].apply(variables, x, train=False, rngs=rngs)
  monkeypatch.setattr(jax.nn, "dot_product_attention", as_xla)
  got = built["cudnn"].apply(variables, x, train=False, rngs=rngs)
  if name == "adatape":
    lengths = np.asarray(want.metrics_B["tape_length"])
    assert lengths.min() < lengths.max()
  np.testing.assert_allclose(got.logits, want.logits, atol=2e-2)


def test_cudnn_needs_head_dimensions_it_takes(monkeypatch):
  # Hopper takes heads up to 256, earlier GPUs up to 128; multiples of 8.
  for capability, fits in (("9.0", True), ("8.6", False)):
    gpu = types.SimpleNamespace(platform="gpu", compute_capability=capability)
    with monkeypatch.context() as m:
      m.setattr(jax, "devices", lambda gpu=gpu: [gpu])
      assert layers.cudnn_fits(192) == fits
      assert layers.cudnn_fits(128) and not layers.cudnn_fits(12)
  monkeypatch.setattr(layers, "platform", lambda: "gpu")
  assert layers.attention_implementation("auto", jnp.bfloat16, 64) == "cudnn"
  assert layers.attention_implementation("auto", jnp.bfloat16, 12) == "xla"
  assert layers.attention_implementation("auto", jnp.float32, 64) == "xla"
  encoder.EncoderConfig(attention="cudnn", dtype="bfloat16", width=64)
  with pytest.raises(
      run_config.ConfigError,
      match=r"model.attention='cudnn' needs a head dimension .* multiple of "
      r"8 .*\(here: 12\)",
  ):
    encoder.EncoderConfig(
        attention="cudnn", dtype="bfloat16", width=36, num_heads=3
    )


def test_auto_attention_picks_a_path_this_platform_has():
  platform = jax.devices()[0].platform
  for dtype in (jnp.float32, jnp.bfloat16):
    chosen = layers.attention_implementation("auto", dtype, 64)
    if platform != "gpu":
      assert chosen == "xla"
  cfg = encoder.EncoderConfig(attention="auto", dtype="bfloat16")
  assert cfg.compute_dtype == jnp.bfloat16


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "--config.model.dtype=float16",
            "error: model.dtype='float16' is not valid; choose one of "
            "'float32', 'bfloat16'",
        ),
        (
            "--config.model.attention=flash",
            "error: model.attention='flash' is not valid; choose one of "
            "'auto', 'xla', 'cudnn'",
        ),
        (
            "--config.model.attention=cudnn",
            "error: model.attention='cudnn' needs a GPU and "
            "model.dtype='bfloat16' (here: cpu, float32); choose one of "
            "'auto', 'xla'",
        ),
        (
            "--config.optim.mu_dtype=float16",
            "error: optim.mu_dtype='float16' is not valid; choose one of '', "
            "'bfloat16'",
        ),
    ],
)
def test_bad_precision_keys_are_one_line_errors(tmp_path, override, message):
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [
          sys.executable,
          "-m",
          "adatape.main",
          "--config=configs/parity/adatape.py:tiny",
          f"--workdir={workdir}",
          override,
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == message
  assert not workdir.exists()


def test_cudnn_is_refused_off_a_gpu_in_the_typed_config():
  if jax.devices()[0].platform == "gpu":
    pytest.skip("cuDNN exists here")
  with pytest.raises(run_config.ConfigError, match="model.attention='cudnn'"):
    encoder.EncoderConfig(attention="cudnn", dtype="bfloat16")
