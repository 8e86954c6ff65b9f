r"""ALBERT-style per-token ACT depth (Simoulin & Crabbe 2021) on parity.

One shared block iterated up to 2 * depth times; halted tokens frozen.
Same data, budget and width as the other parity models (common.py).

Run (2-core CPU):
  python -m adatape.main --config=configs/parity/albert_act.py --workdir=/tmp/albert_act
Compared with every other method by experiments/compare_methods.py; the
measured numbers are in experiments/results/compare_methods.md.
"""

import ml_collections

from configs import methods
from configs.parity import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse(arg)
  c = common.base(args)
  c.model = methods.albert_act(common.model, 2 * common.DEPTH)
  if args.tiny:
    common.shrink(c)
  return c
