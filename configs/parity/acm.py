r"""Adaptive Computation Modules (Wojcik et al. 2023) converted from a parity
Transformer, in three runs.

Each stage starts from the previous stage's workdir (`init=`); the first
from a finished `configs/parity/transformer.py` run with the same args:
  python -m adatape.main --config=configs/parity/transformer.py \
      --workdir=/tmp/tf
  python -m adatape.main --config=configs/parity/acm.py:stage=distill,init=/tmp/tf \
      --workdir=/tmp/acm1
  python -m adatape.main --config=configs/parity/acm.py:stage=gates,init=/tmp/acm1 \
      --workdir=/tmp/acm2
  python -m adatape.main --config=configs/parity/acm.py:stage=finetune,init=/tmp/acm2 \
      --workdir=/tmp/acm3
experiments/compare_methods.py runs the chain; its measured numbers are in
experiments/results/compare_methods.md.
"""

import ml_collections

from configs import methods
from configs.parity import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse(arg, stage="finetune", init="")
  c = common.base(args)
  c.model = methods.acm(common.model, args.stage)
  methods.acm_stage(c, args.stage, args.init)
  if args.tiny:
    common.shrink(c)
    c.total_steps = 4
  return c
