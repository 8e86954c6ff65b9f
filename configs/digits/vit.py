r"""ViT on the offline digits (see common.py for preparing the data).

Run (2-core CPU):
  python -m adatape.main \
      --config=configs/digits/vit.py:data_dir=$HOME/tensorflow_datasets \
      --workdir=/tmp/digits_vit
The measured accuracy is in the README ("Images: CPU learning check").
"""

import ml_collections

from configs.digits import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse(arg)
  c = common.base(args)
  c.model = common.model("transformer")
  if args.tiny:
    common.shrink(c)
  return c
