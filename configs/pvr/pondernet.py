r"""PonderNet on pointer-value retrieval.

One shared block, up to MAX_STEPS (8) steps, halting per example.
Same data, budget and width as every PVR model (common.py).

Run (2-core CPU):
  python -m adatape.main --config=configs/pvr/pondernet.py --workdir=/tmp/pvr_pondernet
Compared with every other method, with accuracy and compute per hop count,
by experiments/compare_methods.py; measured numbers in
experiments/results/compare_methods.md.
"""

import ml_collections

from configs import methods
from configs.pvr import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse(arg)
  c = common.base(args)
  c.model = methods.pondernet(common.model, common.MAX_STEPS)
  if args.tiny:
    common.shrink(c)
  return c
