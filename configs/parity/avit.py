r"""A-ViT token halting (Yin et al. 2022) on sequence tokens on parity.

2 * depth unshared layers, so the halting has depth to choose from.
Same data, budget and width as the other parity models (common.py).

Run (2-core CPU):
  python -m adatape.main --config=configs/parity/avit.py --workdir=/tmp/avit
Compared with every other method by experiments/compare_methods.py; the
measured numbers are in experiments/results/compare_methods.md.
"""

import ml_collections

from configs import methods
from configs.parity import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse(arg)
  c = common.base(args)
  c.model = methods.avit(common.model, 2 * common.DEPTH)
  if args.tiny:
    common.shrink(c)
  return c
