r"""Adaptive Computation Modules converted from a PVR Transformer, in three
runs (see configs/parity/acm.py for the chain of commands; here with
--config=configs/pvr/transformer.py and configs/pvr/acm.py). The measured
numbers are in experiments/results/compare_methods.md.
"""

import ml_collections

from configs import methods
from configs.pvr import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse(arg, stage="finetune", init="")
  c = common.base(args)
  c.model = methods.acm(common.model, args.stage)
  methods.acm_stage(c, args.stage, args.init)
  if args.tiny:
    common.shrink(c)
    c.total_steps = 4
  return c
