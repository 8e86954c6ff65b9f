"""What every config family shares: the run schedule, the optimizer and
the mesh, the shape of a `model` section, and a seconds-long test run.

Each family's `common.py` (parity, PVR, digits, ImageNet; JFT builds on
ImageNet's) adds its data section, its loss, its default length of
training and its encoder size, and overrides what its recipe changes.
"""

import ml_collections


def run(total_steps: int, loss: str) -> ml_collections.ConfigDict:
  """Schedule, optimizer and mesh; no data and no model."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = total_steps
  c.batch_size = 128
  c.eval_batch_size = 1024
  c.loss = loss
  c.log_every_steps = 200
  c.eval_every_steps = 1000
  c.checkpoint_every_steps = 1000
  c.max_checkpoints = 3
  # (first, last): a profiler trace of those steps into WORKDIR/profile.
  c.profile_steps = ()

  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 200
  # Cosine to zero: a constant rate gave mid-training collapses on parity.
  c.optim.schedule = "cosine"
  c.optim.weight_decay = 1e-4
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.clip_norm = 1.0
  c.optim.decay_mask = "all"
  # "bfloat16" halves the memory of Adam's first moment.
  c.optim.mu_dtype = ""

  c.mesh = ml_collections.ConfigDict()
  # Data parallel over every device; see adatape/parallel.py for fsdp and
  # mesh.model (tensor parallelism).
  c.mesh.data = -1
  c.mesh.model = 1
  c.mesh.sharding = "replicated"
  return c


def encoder(
    name: str, width: int, depth: int, num_heads: int, mlp_dim: int, **extra
) -> ml_collections.ConfigDict:
  """A `model` section: the encoder size plus model-specific keys.

  Every model computes in float32 by default (the synthetic tasks and the
  CPU digits check); the image recipes set `dtype="bfloat16"`.
  `attention="auto"` takes cuDNN's fused kernel on a GPU in bfloat16.
  """
  return ml_collections.ConfigDict(
      dict(
          dict(
              name=name,
              width=width,
              depth=depth,
              num_heads=num_heads,
              mlp_dim=mlp_dim,
              dropout=0.0,
              attention_dropout=0.0,
              dtype="float32",
              attention="auto",
          ),
          **extra,
      )
  )


def shrink(c: ml_collections.ConfigDict) -> None:
  """A run of seconds for tests: tiny model and schedule (the family
  shrinks its data)."""
  c.total_steps = 6
  c.batch_size = 16
  c.eval_batch_size = 32
  c.log_every_steps = 2
  c.eval_every_steps = 3
  c.checkpoint_every_steps = 2
  c.data.eval_examples = 40
  c.optim.warmup_steps = 2
  c.model.width = 16
  c.model.num_heads = 2
  c.model.mlp_dim = 32
