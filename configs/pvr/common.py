"""What every pointer-value-retrieval config shares: data, budget, size.

The task (adatape/data/pvr.py): S values, a hop count h in token 0; follow
h pointers from position 0 and name the value found. Training sees
h in 1..train_hops, the eval set 1..eval_hops, so eval asks for more hops
than training did (the Hyper-UT paper's complexity axis). Fixed-depth
models have `DEPTH` blocks; recurrent ones may take up to `MAX_STEPS`
steps, enough for the largest eval hop count.

Config args: `seq_len=N`, `train_hops=N`, `eval_hops=N`, `steps=N`,
`tiny` (a seconds-long run for tests).
"""

import ml_collections

from adatape import run_config

WIDTH, DEPTH, HEADS, MLP_DIM = 64, 4, 4, 256
MAX_STEPS = 8


def parse(arg: str | None, **extra) -> ml_collections.ConfigDict:
  return run_config.parse_arg(arg, seq_len=8, train_hops=3, eval_hops=6,
                              tiny=False, steps=0, **extra)


def base(args: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Data, budget and optimizer; no model."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = args.steps or 6000
  c.batch_size = 128
  c.eval_batch_size = 1024
  c.loss = "softmax_xent"
  c.log_every_steps = 200
  c.eval_every_steps = 1000
  c.checkpoint_every_steps = 1000
  c.max_checkpoints = 3

  c.data = ml_collections.ConfigDict()
  c.data.name = "pvr"
  c.data.seq_len = args.seq_len
  c.data.train_hops = args.train_hops
  c.data.eval_hops = args.eval_hops
  c.data.eval_examples = 4096

  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 200
  c.optim.schedule = "cosine"
  c.optim.weight_decay = 1e-4
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.clip_norm = 1.0
  c.optim.decay_mask = "all"

  c.mesh = ml_collections.ConfigDict()
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
  c.data.seq_len = 6
  c.data.eval_examples = 40
  c.optim.warmup_steps = 2
  c.model.width = 16
  c.model.num_heads = 2
  c.model.mlp_dim = 32
  c.model.depth = min(c.model.depth, 4)
