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

from configs.digits import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse(arg)
  c = common.base(args)
  c.model = common.model("adatape", bank_patch_size=4,
                         pool_include_padded_tape=False, bank_posemb=False)
  c.tape = ml_collections.ConfigDict(dict(
      bank="input", bank_size=0, num_tokens=8, tokens_per_step=1,
      epsilon=2.0, adaptive=True, loss_type="entropy", loss_weight=0.01,
      query_type="gap", complex_query=True, query_noise=0.0,
      bank_dropout=0.0, key_split=common.HEADS, layers=(1,), mlp_dim=0,
      encoder_mlp_dim=0, dropout=0.0, legacy_flat_gather=False,
      early_stop=False))
  if args.tiny:
    common.shrink(c)
    c.tape.key_split = 2
  return c
