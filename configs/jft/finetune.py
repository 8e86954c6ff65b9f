r"""Fine-tune a JFT-style pre-trained ViT or AdaTape-ViT on ImageNet-1K.

Run (after configs/jft/{vit,adatape}.py):
  python -m adatape.main \
      --config=configs/jft/finetune.py:init_from=PRETRAIN_WORKDIR,method=adatape,variant=B/16,bank=input,data_dir=$DATA \
      --workdir=gs://BUCKET/jft_adatape_b16_ft

Every parameter with the same path and shape starts from the pre-trained
run's latest checkpoint (`init_from`); the 1000-class head is new (its
shape differs) with bias -6.9, and the position embeddings (of the
patches and of the input bank) are resampled bilinearly to the larger
patch grid. Recipe, the ViT paper's fine-tuning (Dosovitskiy et al. 2021,
appendix B.1.1): 384 px (config arg `image_size=`), SGD with momentum 0.9, no
weight decay, global-norm clip 1.0, batch 512, 20,000 steps (500 warmup,
cosine), peak LR 0.01 (its grid: 0.003, 0.01, 0.03, 0.06); Inception crop
and flip only; eval resizes to 384 * 8 / 7 and centre crops.
"""

import ml_collections

from adatape import run_config
from configs.imagenet import adatape as imagenet_adatape
from configs.imagenet import common as imagenet
from configs.imagenet import vit as imagenet_vit


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = imagenet.parse(
      arg,
      init_from="",
      method="adatape",
      bank="input",
      steps=20_000,
      image_size=0,
  )
  run_config.check(
      bool(args.init_from),
      "config arg init_from=WORKDIR (the pre-training run) is required",
  )
  run_config.check_choice("config arg method", args.method, ("vit", "adatape"))
  common_args = f"variant={args.variant},data_dir={args.data_dir}"
  common_args += ",tiny" if args.tiny else ""
  if args.method == "adatape":
    c = imagenet_adatape.get_config(common_args + f",bank={args.bank}")
  else:
    c = imagenet_vit.get_config(common_args)
  c.init_from = args.init_from
  # 0: the paper's 384 px (tiny: 48, still a larger grid than tiny's 32).
  size = args.image_size or (48 if args.tiny else 384)
  c.data.update(
      randaug_layers=0,
      mixup_alpha=0.0,
      image_size=size,
      eval_resize=size * 8 // 7,
  )
  c.optim.update(
      name="sgd",
      learning_rate=0.01,
      warmup_steps=2 if args.tiny else 500,
      schedule="cosine",
      weight_decay=0.0,
      b1=0.9,
      clip_norm=1.0,
  )
  if not args.tiny:
    c.total_steps = args.steps
    c.batch_size = c.eval_batch_size = 512
    c.eval_every_steps = 2000
    c.checkpoint_every_steps = 2000
  return c
