"""What the ImageNet-1K configs share: the official AdaTape/ViT recipe.

Data: TFDS `imagenet2012` from its manual-download directory, prepared once
(nothing is downloaded at run time):

  # ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in $MANUAL
  tfds build imagenet2012 --manual_dir=$MANUAL --data_dir=$DATA
  # add --file_format=array_record for random access (resume reads nothing
  # extra; see adatape/data/stream.py)

Recipe: Inception crop to 224 (area 5-100%), flip, RandAugment(2, 15),
values in [-1, 1], mixup alpha 0.5; eval resize 256 / centre crop 224.
AdamW (b1 0.9, b2 0.999, weight decay 0.1 on every parameter), peak LR
1e-3, 10k warmup steps, cosine to 0, global-norm clip 1.0, batch 4096,
300 epochs (312 steps each = 93,600 steps); sigmoid cross-entropy summed
over the 1000 classes, head bias -6.9; float32; seed 42; eval every 1000
steps, checkpoint every 5000.

Config args: `variant=S/16` (Ti, S, B or L, slash, patch size), `data_dir=`,
`batch=4096`, `epochs=300`, `tiny` (a seconds-long test run: width 16,
32 px images, a few steps).
"""

import ml_collections

from adatape import run_config
from configs import shared

# name: (width, depth, heads, MLP width), the ViT sizes of the official code.
VARIANTS = {
    "Ti": (192, 12, 3, 768),
    "S": (384, 12, 6, 1536),
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
}
TRAIN_EXAMPLES = 1_281_167
IMAGE_SIZE = 224


def parse(
    arg: str | None, epochs: int = 300, **extra
) -> ml_collections.ConfigDict:
  """The config args; `extra` adds a config file's own (with defaults)."""
  args = run_config.parse_arg(
      arg,
      variant="S/16",
      data_dir="",
      batch=4096,
      epochs=epochs,
      tiny=False,
      **extra,
  )
  name, _, patch = args.variant.partition("/")
  run_config.check(
      name in VARIANTS
      and patch.isdigit()
      and int(patch) > 0
      and IMAGE_SIZE % int(patch) == 0,
      f"config arg variant={args.variant!r} must be NAME/PATCH with NAME in "
      f"{'/'.join(VARIANTS)} and PATCH dividing {IMAGE_SIZE}, e.g. S/16",
  )
  run_config.check(
      args.batch > 0 and args.epochs > 0,
      "config args batch and epochs must be > 0",
  )
  return args


def base(args: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Data, budget and optimizer of the official recipe; no model."""
  steps = args.epochs * (TRAIN_EXAMPLES // args.batch)
  c = shared.run(steps, "sigmoid_xent")
  c.seed = 42
  c.batch_size = args.batch
  c.eval_batch_size = args.batch
  c.log_every_steps = 100
  c.eval_every_steps = 1000
  c.checkpoint_every_steps = 5000
  c.optim.update(
      learning_rate=1e-3,
      warmup_steps=10_000,
      schedule="cosine",
      weight_decay=0.1,
      b1=0.9,
      b2=0.999,
      clip_norm=1.0,
      decay_mask="all",
  )
  c.data = ml_collections.ConfigDict(
      dict(
          name="stream",
          dataset="imagenet2012",
          data_dir=args.data_dir,
          train_split="train",
          eval_split="validation",
          image_key="image",
          label_key="label",
          num_classes=0,
          image_size=IMAGE_SIZE,
          eval_resize=256,
          crop_area_min=0.05,
          flip=True,
          randaug_layers=2,
          randaug_magnitude=15.0,
          mixup_alpha=0.5,
          shuffle_buffer=250_000,
          prefetch=2,
      )
  )
  return c


def model(name: str, variant: str, **extra) -> ml_collections.ConfigDict:
  """The `model` section of a ViT-family model: the variant's size,
  16-patch stem, gap pooling, the head bias of sigmoid cross-entropy over
  1000 classes, and bfloat16 computation (parameters and optimizer state
  stay float32)."""
  size, patch = variant.split("/")
  return shared.encoder(
      name,
      *VARIANTS[size],
      **dict(
          dict(
              stem="patches",
              patch_size=int(patch),
              classifier="gap",
              posemb=True,
              head_bias_init=-6.9,
              dtype="bfloat16",
          ),
          **extra,
      ),
  )


def shrink(c: ml_collections.ConfigDict) -> None:
  """A seconds-long run on a small prepared dataset (tests)."""
  shared.shrink(c)
  del c.data.eval_examples  # The eval set is the whole eval split.
  c.model.depth = 2
  c.model.patch_size = 8
  c.data.image_size = 32
  c.data.eval_resize = 36
  c.data.shuffle_buffer = 64
  c.optim.warmup_steps = 2
