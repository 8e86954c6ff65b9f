"""What every parity config shares: data, budget, optimizer, logging.

The model files (`adatape.py`, `transformer.py`, `universal_transformer.py`)
call `base(arg)` and add their `model` (and `tape`) sections, so the three
models always train on the same data with the same budget.

Config args (after `:` in `--config=...`): `seq_len=N`, `variant=graves`,
`tiny` (a seconds-long run for tests).
"""

import ml_collections

from adatape import run_config

# Shared width/depth of all parity models: the prototype's size.
WIDTH, DEPTH, HEADS, MLP_DIM = 64, 2, 4, 256


def parse(arg: str | None, **extra) -> ml_collections.ConfigDict:
  """The family's config args, plus a method file's `extra` ones."""
  return run_config.parse_arg(arg, seq_len=32, variant="uniform", tiny=False,
                              steps=0, **extra)


def base(args: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Data, budget and optimizer; no model."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = args.steps or 12000
  c.batch_size = 128
  c.eval_batch_size = 1024
  # The official AdaTape loss: sigmoid cross-entropy summed over classes.
  c.loss = "sigmoid_xent"
  c.log_every_steps = 200
  c.eval_every_steps = 1000
  c.checkpoint_every_steps = 1000
  c.max_checkpoints = 3

  c.data = ml_collections.ConfigDict()
  c.data.name = "parity"
  c.data.seq_len = args.seq_len
  c.data.variant = args.variant
  c.data.eval_examples = 4096

  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 200
  # Cosine to zero: a constant rate gave mid-training collapses.
  c.optim.schedule = "cosine"
  c.optim.weight_decay = 1e-4
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.clip_norm = 1.0
  c.optim.decay_mask = "all"

  c.mesh = ml_collections.ConfigDict()
  # Data parallel over every device; see adatape/parallel.py for fsdp and
  # mesh.model (tensor parallelism).
  c.mesh.data = -1
  c.mesh.model = 1
  c.mesh.sharding = "replicated"
  return c


def model(name: str, **extra) -> ml_collections.ConfigDict:
  """The shared encoder size plus model-specific keys."""
  return ml_collections.ConfigDict(dict(
      name=name, width=WIDTH, depth=DEPTH, num_heads=HEADS, mlp_dim=MLP_DIM,
      dropout=0.0, attention_dropout=0.0, **extra))


def shrink(c: ml_collections.ConfigDict) -> None:
  """A run of seconds for tests: tiny model, data and schedule."""
  c.total_steps = 6
  c.batch_size = 16
  c.eval_batch_size = 32
  c.log_every_steps = 2
  c.eval_every_steps = 3
  c.checkpoint_every_steps = 2
  c.data.seq_len = 8
  c.data.eval_examples = 40
  c.optim.warmup_steps = 2
  c.model.width = 16
  c.model.num_heads = 2
  c.model.mlp_dim = 32
