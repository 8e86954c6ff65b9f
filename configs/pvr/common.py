"""What every pointer-value-retrieval config shares: data, budget, size.

The task (adatape/data/pvr.py): S values, then the hop count h as h marker
tokens; follow h pointers from position 0 (chains without cycles) and name
the value found. Training sees
h in 1..train_hops, the eval set 1..eval_hops, so eval asks for more hops
than training did (the Hyper-UT paper's complexity axis). Fixed-depth
models have `DEPTH` blocks; recurrent ones may take up to `MAX_STEPS`
steps, enough for the largest eval hop count.

Config args: `seq_len=N`, `train_hops=N`, `eval_hops=N`, `steps=N`,
`tiny` (a seconds-long run for tests).
"""

import ml_collections

from adatape import run_config
from configs import shared

WIDTH, DEPTH, HEADS, MLP_DIM = 64, 4, 4, 256
MAX_STEPS = 8


def parse(arg: str | None, **extra) -> ml_collections.ConfigDict:
  return run_config.parse_arg(
      arg, seq_len=8, train_hops=3, eval_hops=6, tiny=False, steps=0, **extra
  )


def base(args: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Data, budget and optimizer; no model."""
  c = shared.run(args.steps or 6000, "softmax_xent")
  c.data = ml_collections.ConfigDict()
  c.data.name = "pvr"
  c.data.seq_len = args.seq_len
  c.data.train_hops = args.train_hops
  c.data.eval_hops = args.eval_hops
  c.data.eval_examples = 4096
  return c


def model(name: str, **extra) -> ml_collections.ConfigDict:
  """The shared encoder size plus model-specific keys."""
  return shared.encoder(name, WIDTH, DEPTH, HEADS, MLP_DIM, **extra)


def shrink(c: ml_collections.ConfigDict) -> None:
  """A run of seconds for tests: tiny model, data and schedule."""
  shared.shrink(c)
  c.data.seq_len = 6
  c.data.eval_hops = 4  # seq_len >= eval_hops + 2.
  c.model.depth = min(c.model.depth, 4)
