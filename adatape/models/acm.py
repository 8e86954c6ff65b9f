"""Adaptive Computation Modules (Wojcik et al. 2023, arXiv:2312.10193).

Every block's MLP (width F) is replaced by K small learners of width F / K
whose outputs are summed: h(z, k) = sum_{n <= k} b_n + sum_{1 <= n <= k}
s_n(z), with s_n(z) = W2_n gelu(W1_n z + b1_n) and one output bias b_n per
choice, as the official code (choice 0 skips the learners and outputs b_0).
A per-token gate (Linear-GELU-Linear-GELU-
Linear; the code drop omits the nonlinearities, which makes it one linear
map) picks k in {0..K}. All K learners run as one width-F matmul and a
cumulative sum, so shapes are static; compute is reported for the chosen k.

A trained Transformer from this codebase is converted in three runs, each
starting from the previous one's checkpoint (`init_from`), with
`model.stage`:
  distill   the teacher's MLP (`mlp`, loaded from the Transformer) still
            drives the residual stream; the learners regress its output,
            MSE averaged over k = 1..K (only `acm/learners` trainable).
  gates     the gate is trained with cross-entropy on labels from the
            learners' errors e_k = |h(z, k) - y| by the official rule
            (`gate_labels`: j + 1 for the first j with e_j / e_{j+1} <
            `gate_error_factor`, K when j = 0 or none) (only `acm/gate`).
  finetune  the learners replace the MLP, gated by a straight-through hard
            Gumbel-softmax sample in training and the argmax in evaluation;
            everything trains with the task loss plus the budget, entropy
            and diversity losses. The output is sum_k g_k h(z, k), so the
            task loss reaches the gates (the code drop uses only the argmax,
            and its gated loop runs one learner too few; both fixed here).

One deviation is kept: only the blocks' MLPs become ACMs. The official
code can also convert the attention projections (q, k, v, o; their
minimum choice 1), which this module does not; its learner counts and
FLOPs savings are therefore those of the MLPs alone.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from adatape import layers
from adatape import run_config
from adatape.models import encoder
from adatape.models import flops
from adatape.models import outputs
from adatape.models import stems

STAGES = ("distill", "gates", "finetune")
DETACH = ("detach", "no_detach")

METRICS = (
    outputs.Metric("learners_used", "learners/token", "learners", cost=True),
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(stems.ClassifierConfig):
  """ACM settings.

  Attributes:
    stage: "distill", "gates" or "finetune" (see the module docstring).
    num_learners: K (official: 4); must divide `mlp_dim`.
    gate_hidden: width of the gate's hidden layers (official: 16).
    gumbel_temperature: tau of the Gumbel-softmax (official: 0.8).
    gate_error_factor: the gate-label ratio threshold (official: 1.2).
    detach: "detach" (the gradient of h(z, k) reaches only learner k, the
      code drop's effective default) or "no_detach" (plain sum).
    budget_target: beta_target, the target fraction of learners used.
    budget_weight: weight of |used fraction - beta_target| (official 0.1).
    entropy_weight: weight of the per-example entropy of chosen k (0.05).
    diversity_weight: weight of the between-example spread of compute
      (0.05).
  """

  stage: str = "finetune"
  num_learners: int = 4
  gate_hidden: int = 16
  gumbel_temperature: float = 0.8
  gate_error_factor: float = 1.2
  detach: str = "detach"
  budget_target: float = 0.5
  budget_weight: float = 0.1
  entropy_weight: float = 0.05
  diversity_weight: float = 0.05

  def __post_init__(self):
    super().__post_init__()
    check = run_config.check
    run_config.check_choice("model.stage", self.stage, STAGES)
    run_config.check_choice("model.detach", self.detach, DETACH)
    check(
        self.num_learners >= 1
        and self.encoder.mlp_dim % self.num_learners == 0,
        f"model.num_learners={self.num_learners} must divide "
        f"model.mlp_dim={self.encoder.mlp_dim}",
    )
    check(
        self.gate_hidden >= 1,
        f"model.gate_hidden={self.gate_hidden} must be >= 1",
    )
    check(self.gumbel_temperature > 0, "model.gumbel_temperature must be > 0")
    check(
        self.gate_error_factor > 1,
        f"model.gate_error_factor={self.gate_error_factor} must be > 1",
    )
    check(
        0 <= self.budget_target <= 1,
        f"model.budget_target={self.budget_target} must be in [0, 1]",
    )
    for name in ("budget_weight", "entropy_weight", "diversity_weight"):
      check(getattr(self, name) >= 0, f"model.{name} must be >= 0")


def gate_labels(errors_BxLxK1: jax.Array, factor: float) -> jax.Array:
  """The official rule: with j the first choice whose next learner improves
  the error by less than `factor` (e_j / e_{j+1} < factor), the label is
  j + 1, and K when j = 0 or no choice qualifies (the official code takes
  an argmax that cannot tell j = 0 from none). Labels therefore run over
  2..K (and K for j = 0); errors over choices k = 0..K."""
  num_choices = errors_BxLxK1.shape[-1]
  ratio = errors_BxLxK1[..., :-1] / jnp.maximum(errors_BxLxK1[..., 1:], 1e-12)
  first = jnp.argmax(ratio < factor, axis=-1)
  return jnp.where(first == 0, num_choices - 1, first + 1)


class Learners(nn.Module):
  """K learners: returns h(z, k) for k = 0..K, `[B, L, K + 1, D]`."""

  num_learners: int
  hidden: int
  detach: str

  @nn.compact
  def __call__(self, z_BxLxD: jax.Array) -> jax.Array:
    k, hid, d = self.num_learners, self.hidden, z_BxLxD.shape[-1]
    init = nn.initializers.xavier_uniform()
    w1 = self.param("w1", init, (d, k * hid)).reshape(d, k, hid)
    b1 = self.param("b1", nn.initializers.zeros, (k, hid))
    w2 = self.param("w2", init, (k * hid, d)).reshape(k, hid, d)
    # One output bias per choice, as the official code: choice 0 (the
    # module skipped) outputs b_0, choice k adds s_n + b_n for n <= k.
    bias = self.param("bias", nn.initializers.zeros, (k + 1, d))
    dtype = z_BxLxD.dtype  # The model's computation dtype.
    a = nn.gelu(
        jnp.einsum("bld,dkh->blkh", z_BxLxD, w1.astype(dtype))
        + b1.astype(dtype)
    )
    s_BxLxKxD = jnp.einsum("blkh,khd->blkd", a, w2.astype(dtype))
    zero = jnp.zeros_like(s_BxLxKxD[:, :, :1])
    s_BxLxK1xD = jnp.concatenate([zero, s_BxLxKxD], axis=2) + bias.astype(dtype)
    total = jnp.cumsum(s_BxLxK1xD, axis=2)
    if self.detach == "detach":
      total = jax.lax.stop_gradient(total - s_BxLxK1xD) + s_BxLxK1xD
    return total


class Gate(nn.Module):
  """Per-token logits over k = 0..K."""

  num_choices: int
  hidden: int

  @nn.compact
  def __call__(self, z_BxLxD: jax.Array) -> jax.Array:
    g = nn.gelu(nn.Dense(self.hidden)(z_BxLxD))
    g = nn.gelu(nn.Dense(self.hidden)(g))
    return nn.Dense(self.num_choices)(g).astype(jnp.float32)


class AcmBlock(nn.Module):
  """Pre-LN block whose MLP is an ACM; returns (x, per-block stats)."""

  config: Config

  @nn.compact
  def __call__(
      self, x_BxLxD: jax.Array, mask_BxL: jax.Array, *, train: bool
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    cfg = self.config
    enc = cfg.encoder
    num_choices = cfg.num_learners + 1
    x_BxLxD = x_BxLxD + encoder.attention_sublayer(
        enc, x_BxLxD, mask_BxL, train
    )
    z = nn.LayerNorm(dtype=enc.compute_dtype, name="norm_mlp")(x_BxLxD)
    h_BxLxKxD = Learners(
        cfg.num_learners,
        enc.mlp_dim // cfg.num_learners,
        cfg.detach,
        name="learners",
    )(z)
    logits_BxLxK = Gate(num_choices, cfg.gate_hidden, name="gate")(z)
    stats = {}
    if cfg.stage == "finetune":
      if train:
        soft = jax.nn.softmax(
            (
                logits_BxLxK
                + jax.random.gumbel(
                    self.make_rng("halting"), logits_BxLxK.shape
                )
            )
            / cfg.gumbel_temperature,
            axis=-1,
        )
        hard = jax.nn.one_hot(soft.argmax(-1), num_choices)
        g_BxLxK = hard + soft - jax.lax.stop_gradient(soft)
      else:
        g_BxLxK = jax.nn.one_hot(logits_BxLxK.argmax(-1), num_choices)
      update = jnp.einsum(
          "blk,blkd->bld", g_BxLxK.astype(h_BxLxKxD.dtype), h_BxLxKxD
      )
      stats["choice"] = g_BxLxK
    else:
      y = layers.Mlp(enc.mlp_dim, enc.dropout, enc.compute_dtype, name="mlp")(
          z, train=train
      )
      target = jax.lax.stop_gradient(y)
      if cfg.stage == "distill":
        stats["loss"] = jnp.mean(
            (h_BxLxKxD[:, :, 1:] - target[:, :, None]) ** 2, axis=(2, 3)
        )
      else:
        errors = jnp.linalg.norm(
            jax.lax.stop_gradient(h_BxLxKxD) - target[:, :, None], axis=-1
        )
        labels = gate_labels(errors, cfg.gate_error_factor)
        stats["loss"] = -jnp.take_along_axis(
            jax.nn.log_softmax(logits_BxLxK), labels[..., None], -1
        )[..., 0]
      stats["choice"] = jax.nn.one_hot(logits_BxLxK.argmax(-1), num_choices)
      update = y
    return x_BxLxD + update, stats


class Model(nn.Module):
  """Stem -> blocks with ACM MLPs -> LN -> pool -> head."""

  config: Config

  @nn.compact
  def __call__(self, inputs: jax.Array, *, train: bool) -> outputs.ModelOutput:
    cfg = self.config
    enc = cfg.encoder
    x = cfg.make_stem()(inputs, train=train)
    mask_BxL = jnp.ones(x.shape[:2], bool)
    valid = mask_BxL.astype(jnp.float32)
    count_B = valid.sum(1)
    ks = jnp.arange(cfg.num_learners + 1, dtype=jnp.float32)
    used, block_losses, hists = [], [], []
    for i in range(enc.depth):
      x, stats = AcmBlock(cfg, name=f"encoderblock_{i}")(
          x, mask_BxL, train=train
      )
      k_BxL = stats["choice"] @ ks
      used.append(k_BxL)
      hists.append(
          jnp.einsum("blk,bl->bk", stats["choice"], valid) / count_B[:, None]
      )
      if "loss" in stats:
        block_losses.append((stats["loss"] * valid).sum(1) / count_B)
    logits = cfg.classify(x, mask_BxL)

    k_BxL = jnp.mean(jnp.stack(used), axis=0)  # Mean over blocks.
    fraction_B = (k_BxL * valid).sum(1) / count_B / cfg.num_learners
    gate_flops = (
        flops.dense(enc.width, cfg.gate_hidden, 1)
        + flops.dense(cfg.gate_hidden, cfg.gate_hidden, 1)
        + flops.dense(cfg.gate_hidden, cfg.num_learners + 1, 1)
    )
    attention = flops.attention(enc.width, count_B, count_B)
    if cfg.stage == "finetune":
      learner = flops.mlp(enc.width, enc.mlp_dim // cfg.num_learners, 1)
      mlp_B = jnp.sum(jnp.stack(used) * valid, axis=(0, 2)) * learner
      flops_B = enc.depth * (attention + gate_flops * count_B) + mlp_B
      budget = jnp.abs(fraction_B.mean() - cfg.budget_target)
      hist = jnp.stack(hists)  # [blocks, B, K + 1]
      entropy_B = -jnp.mean(
          jnp.sum(hist * jnp.log(jnp.maximum(hist, 1e-12)), -1), 0
      ) / jnp.log(cfg.num_learners + 1.0)
      spread = jnp.mean(jnp.abs(fraction_B[:, None] - fraction_B[None, :]))
      aux_B = (
          cfg.budget_weight * budget
          - cfg.entropy_weight * entropy_B
          - cfg.diversity_weight * 2.0 * spread
      )
    else:
      flops_B = enc.depth * (
          attention + flops.mlp(enc.width, enc.mlp_dim, count_B)
      )
      aux_B = sum(block_losses) / enc.depth
    return outputs.ModelOutput(
        logits=logits,
        aux_loss_B=aux_B,
        flops_B=flops_B,
        metrics_B={"learners_used": fraction_B * cfg.num_learners},
        token_depth_BxL=k_BxL * valid,
    )
