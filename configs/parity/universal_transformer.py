r"""Universal Transformer with per-token ACT on parity.

One shared block applied up to `depth` = 4 times (twice the other models'
depth, as tensor2tensor's act_max_steps = 2 * layers), same width and budget.

Run (2-core CPU):
  python -m adatape.main --config=configs/parity/universal_transformer.py \
      --workdir=/tmp/ut
Per-example halting: --config.model.act_level=per_example

Measured (2-core CPU, 12000 steps of batch 128, seed 0): eval accuracy
47.7% (chance); the ponder cost drives every token to halt after one step
(mean ponder steps 1.00).
"""

import ml_collections

from configs.parity import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse(arg)
  c = common.base(args)
  c.model = common.model(
      "universal_transformer",
      stem="sequence",
      classifier="gap",
      posemb=True,
      act_level="per_token",
      act_type="basic",
      act_epsilon=0.01,
      halting_bias_init=1.0,
      act_loss_weight=0.01,
      head_bias_init=0.0,
  )
  c.model.depth = 2 * common.DEPTH
  if args.tiny:
    common.shrink(c)
  return c
