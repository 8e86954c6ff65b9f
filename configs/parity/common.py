"""What every parity config shares: data, budget, optimizer, logging.

The model files (`adatape.py`, `transformer.py`, `universal_transformer.py`)
call `base(arg)` and add their `model` (and `tape`) sections, so the three
models always train on the same data with the same budget.

Config args (after `:` in `--config=...`): `seq_len=N`, `variant=graves`,
`tiny` (a seconds-long run for tests).
"""

import ml_collections

from adatape import run_config
from configs import shared

# Shared width/depth of all parity models: the prototype's size.
WIDTH, DEPTH, HEADS, MLP_DIM = 64, 2, 4, 256


def parse(arg: str | None, **extra) -> ml_collections.ConfigDict:
  """The family's config args, plus a method file's `extra` ones."""
  return run_config.parse_arg(
      arg, seq_len=32, variant="uniform", tiny=False, steps=0, **extra
  )


def base(args: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Data, budget and optimizer; no model."""
  # The official AdaTape loss: sigmoid cross-entropy summed over classes.
  c = shared.run(args.steps or 12000, "sigmoid_xent")
  c.data = ml_collections.ConfigDict()
  c.data.name = "parity"
  c.data.seq_len = args.seq_len
  c.data.variant = args.variant
  c.data.eval_examples = 4096
  return c


def model(name: str, **extra) -> ml_collections.ConfigDict:
  """The shared encoder size plus model-specific keys."""
  return shared.encoder(name, WIDTH, DEPTH, HEADS, MLP_DIM, **extra)


def shrink(c: ml_collections.ConfigDict) -> None:
  """A run of seconds for tests: tiny model, data and schedule."""
  shared.shrink(c)
  c.data.seq_len = 8
