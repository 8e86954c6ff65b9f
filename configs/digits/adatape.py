r"""AdaTape-ViT on the offline digits, with the input-driven bank.

The main tokens are patch-8 (16 per image); the bank holds the image's
patch-4 tokens (64, with their own position embedding and Dense, spec
2.2); up to T = 8 of them are appended before block 1.

Run (2-core CPU):
  python -m adatape.main \
      --config=configs/digits/adatape.py:data_dir=$HOME/tensorflow_datasets \
      --workdir=/tmp/digits_adatape
Learnable bank instead: --config.tape.bank=learn --config.tape.bank_size=64.
The measured accuracy is in the README ("Images: CPU learning check").
"""

import ml_collections

from configs import methods
from configs.digits import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse(arg)
  c = common.base(args)
  c.model = common.model(
      "adatape",
      bank_patch_size=4,
      bank_posemb=False,
  )
  c.tape = methods.tape(num_tokens=8, epsilon=2.0, key_split=common.HEADS)
  if args.tiny:
    common.shrink(c)
    c.tape.key_split = 2
  return c
