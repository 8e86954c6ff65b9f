"""Image preprocessing ops of the official ImageNet recipe, in TensorFlow.

Train: Inception crop (area 5-100%, aspect 3/4-4/3) resized to 224, random
horizontal flip, RandAugment(2, 15), values in [-1, 1]; then mixup with
alpha 0.5 on the batch. Eval: resize the short side to 256, centre crop 224,
values in [-1, 1]. (The official AdaTape ImageNet config; the "How to
train your ViT" recipe.)

Every random op is *stateless*: it takes an explicit `[2]` int seed, and the
input pipeline derives that seed from (run seed, step, example index), so a
resumed run sees exactly the batches an uninterrupted one would. The ops
work eagerly and inside `tf.data` maps (tests check both); images are
`[H, W, 3]` uint8 in, float32 out after `value_range`.
"""

import functools
import math

import tensorflow as tf

# RandAugment levels are scaled by level / _MAX_LEVEL, with the TPU
# AutoAugment convention the official configs use, so magnitude 15 is 1.5x
# the "maximum" (e.g. rotations up to 45 degrees).
_MAX_LEVEL = 10.0
_FILL = 128


def _seeds(seed: tf.Tensor, count: int) -> tf.Tensor:
  """`count` independent `[2]` seeds from one."""
  return tf.random.experimental.stateless_split(seed, count)


def _crop_window(
    shape: tf.Tensor,
    seed: tf.Tensor,
    area_min: float,
    area_max: float,
    aspect_min: float,
    aspect_max: float,
) -> tuple[tf.Tensor, tf.Tensor]:
  """Inception-crop window (begin, size) for an image of `shape`."""
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape,
      tf.zeros([0, 0, 4], tf.float32),
      seed=seed,
      area_range=(area_min, area_max),
      aspect_ratio_range=(aspect_min, aspect_max),
      min_object_covered=0.0,
      use_image_if_no_bounding_boxes=True,
  )
  return begin, crop_size


def _resize_to_uint8(image: tf.Tensor, size: int) -> tf.Tensor:
  image = tf.image.resize(
      image, (size, size), method="bilinear", antialias=False
  )
  return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def inception_crop(
    image: tf.Tensor,
    size: int,
    seed: tf.Tensor,
    area_min: float = 0.05,
    area_max: float = 1.0,
    aspect_min: float = 3 / 4,
    aspect_max: float = 4 / 3,
) -> tf.Tensor:
  """A random crop covering [area_min, area_max] of the image, resized."""
  begin, crop_size = _crop_window(
      tf.shape(image), seed, area_min, area_max, aspect_min, aspect_max
  )
  return _resize_to_uint8(tf.slice(image, begin, crop_size), size)


def decode(data: tf.Tensor) -> tf.Tensor:
  """Encoded image bytes (JPEG, PNG, ...) -> [H, W, 3] uint8."""
  image = tf.io.decode_image(data, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def decode_inception_crop(
    data: tf.Tensor,
    size: int,
    seed: tf.Tensor,
    jpeg: bool,
    area_min: float = 0.05,
) -> tf.Tensor:
  """`inception_crop` of encoded bytes, equal to decode-then-crop.

  For JPEG only the window is decoded (`decode_and_crop_jpeg`), which is
  most of the decoding time saved on ImageNet-sized photos; the window is
  the one `inception_crop` would draw from the same seed.
  """
  if not jpeg:
    return inception_crop(decode(data), size, seed, area_min=area_min)
  shape = tf.image.extract_jpeg_shape(data)
  begin, crop_size = _crop_window(shape, seed, area_min, 1.0, 3 / 4, 4 / 3)
  window = tf.stack([begin[0], begin[1], crop_size[0], crop_size[1]])
  crop = tf.image.decode_and_crop_jpeg(data, window, channels=3)
  return _resize_to_uint8(crop, size)


def random_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  return tf.image.stateless_random_flip_left_right(image, seed)


def resize_small(image: tf.Tensor, size: int) -> tf.Tensor:
  """Resizes so that the shorter side is `size`, keeping the aspect."""
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = size / tf.reduce_min(shape)
  new = tf.cast(tf.round(shape * scale), tf.int32)
  resized = tf.image.resize(image, new, method="bilinear", antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def central_crop(image: tf.Tensor, size: int) -> tf.Tensor:
  shape = tf.shape(image)
  top = (shape[0] - size) // 2
  left = (shape[1] - size) // 2
  return tf.slice(image, [top, left, 0], [size, size, -1])


def value_range(
    image: tf.Tensor, low: float = -1.0, high: float = 1.0
) -> tf.Tensor:
  """uint8 [0, 255] -> float32 [low, high]."""
  return tf.cast(image, tf.float32) / 255.0 * (high - low) + low


# RandAugment (Cubuk et al. 2020), on uint8 images.


def _blend(a: tf.Tensor, b: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """a + factor * (b - a), clipped to uint8 (factor may exceed 1)."""
  a = tf.cast(a, tf.float32)
  b = tf.cast(b, tf.float32)
  return tf.cast(tf.clip_by_value(a + factor * (b - a), 0, 255), tf.uint8)


def _affine(image: tf.Tensor, transform: list) -> tf.Tensor:
  """Applies a projective transform [a0 a1 a2 b0 b1 b2 c0 c1] (output ->
  input coordinates), filling with grey."""
  shape = tf.shape(image)
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None],
      transforms=tf.cast(tf.stack(transform)[None], tf.float32),
      output_shape=shape[:2],
      fill_value=float(_FILL),
      interpolation="NEAREST",
      fill_mode="CONSTANT",
  )
  return out[0]


def _rotate(image, degrees):
  h = tf.cast(tf.shape(image)[0], tf.float32)
  w = tf.cast(tf.shape(image)[1], tf.float32)
  r = degrees * math.pi / 180.0
  cos, sin = tf.cos(r), tf.sin(r)
  x_off = ((w - 1) - (cos * (w - 1) - sin * (h - 1))) / 2.0
  y_off = ((h - 1) - (sin * (w - 1) + cos * (h - 1))) / 2.0
  return _affine(image, [cos, -sin, x_off, sin, cos, y_off, 0.0, 0.0])


def _shear_x(image, level):
  return _affine(image, [1.0, level, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])


def _shear_y(image, level):
  return _affine(image, [1.0, 0.0, 0.0, level, 1.0, 0.0, 0.0, 0.0])


def _translate_x(image, pixels):
  return _affine(image, [1.0, 0.0, -pixels, 0.0, 1.0, 0.0, 0.0, 0.0])


def _translate_y(image, pixels):
  return _affine(image, [1.0, 0.0, 0.0, 0.0, 1.0, -pixels, 0.0, 0.0])


def _autocontrast(image, _):
  image = tf.cast(image, tf.float32)
  low = tf.reduce_min(image, axis=[0, 1], keepdims=True)
  high = tf.reduce_max(image, axis=[0, 1], keepdims=True)
  scale = tf.where(high > low, 255.0 / tf.maximum(high - low, 1.0), 1.0)
  offset = tf.where(high > low, low, 0.0)
  return tf.cast(tf.clip_by_value((image - offset) * scale, 0, 255), tf.uint8)


def _equalize_channel(channel):
  """Histogram equalisation of one uint8 channel (PIL's algorithm)."""
  values = tf.cast(channel, tf.int32)
  hist = tf.math.bincount(
      tf.reshape(values, [-1]), minlength=256, maxlength=256
  )
  nonzero = tf.boolean_mask(hist, hist > 0)
  step = (tf.reduce_sum(nonzero) - nonzero[-1]) // 255

  def equalized():
    lut = (tf.cumsum(hist) + step // 2) // tf.maximum(step, 1)
    lut = tf.clip_by_value(tf.concat([[0], lut[:-1]], 0), 0, 255)
    return tf.gather(lut, values)

  out = tf.cond(step > 0, equalized, lambda: values)
  return tf.cast(out, tf.uint8)


def _equalize(image, _):
  return tf.stack([_equalize_channel(image[..., c]) for c in range(3)], -1)


def _invert(image, _):
  return 255 - image


def _posterize(image, bits):
  shift = tf.cast(8 - bits, tf.uint8)
  return tf.bitwise.left_shift(tf.bitwise.right_shift(image, shift), shift)


def _solarize(image, threshold):
  return tf.where(tf.cast(image, tf.float32) < threshold, image, 255 - image)


def _solarize_add(image, addition):
  added = tf.cast(
      tf.clip_by_value(
          tf.cast(image, tf.int32) + tf.cast(addition, tf.int32), 0, 255
      ),
      tf.uint8,
  )
  return tf.where(image < 128, added, image)


def _color(image, factor):
  grey = tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image))
  return _blend(grey, image, factor)


def _contrast(image, factor):
  grey = tf.cast(tf.image.rgb_to_grayscale(image), tf.float32)
  mean = tf.reduce_mean(grey)
  return _blend(tf.fill(tf.shape(image), mean), image, factor)


def _brightness(image, factor):
  return _blend(tf.zeros_like(image), image, factor)


def _sharpness(image, factor):
  """Blend with a 3x3-smoothed image (PIL's SMOOTH kernel), borders kept."""
  x = tf.cast(image, tf.float32)[None]
  kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
  smooth = tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "VALID")[0]
  smooth = tf.cast(tf.clip_by_value(tf.round(smooth), 0, 255), tf.uint8)
  padded = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
  border = tf.pad(tf.ones_like(smooth, tf.bool), [[1, 1], [1, 1], [0, 0]])
  degenerate = tf.where(border, padded, image)
  return _blend(degenerate, image, factor)


def _signed(value, seed):
  """`value` with a random sign (geometric ops go both ways)."""
  flip = tf.random.stateless_uniform([], seed) < 0.5
  return tf.where(flip, -value, value)


# name -> (op, level -> argument, signed). Levels follow the TPU
# AutoAugment/RandAugment arguments.
_OPS = {
    "AutoContrast": (_autocontrast, lambda m: 0.0, False),
    "Equalize": (_equalize, lambda m: 0.0, False),
    "Invert": (_invert, lambda m: 0.0, False),
    "Rotate": (_rotate, lambda m: m / _MAX_LEVEL * 30.0, True),
    "Posterize": (
        _posterize,
        lambda m: tf.cast(
            tf.clip_by_value(tf.round(m / _MAX_LEVEL * 4.0), 0, 8), tf.int32
        ),
        False,
    ),
    # As in the reference implementation, a higher level *raises* the
    # threshold, i.e. solarises less.
    "Solarize": (_solarize, lambda m: m / _MAX_LEVEL * 256.0, False),
    "SolarizeAdd": (_solarize_add, lambda m: m / _MAX_LEVEL * 110.0, False),
    "Color": (_color, lambda m: m / _MAX_LEVEL * 1.8 + 0.1, False),
    "Contrast": (_contrast, lambda m: m / _MAX_LEVEL * 1.8 + 0.1, False),
    "Brightness": (_brightness, lambda m: m / _MAX_LEVEL * 1.8 + 0.1, False),
    "Sharpness": (_sharpness, lambda m: m / _MAX_LEVEL * 1.8 + 0.1, False),
    "ShearX": (_shear_x, lambda m: m / _MAX_LEVEL * 0.3, True),
    "ShearY": (_shear_y, lambda m: m / _MAX_LEVEL * 0.3, True),
    "TranslateX": (_translate_x, lambda m: m / _MAX_LEVEL * 100.0, True),
    "TranslateY": (_translate_y, lambda m: m / _MAX_LEVEL * 100.0, True),
    "Cutout": (None, lambda m: m / _MAX_LEVEL * 40.0, False),
}
RANDAUGMENT_OPS = tuple(_OPS)


def apply_op(
    name: str, image: tf.Tensor, magnitude: float, seed: tf.Tensor
) -> tf.Tensor:
  """One RandAugment op at `magnitude` (geometric ones with a random sign)."""
  op, level, signed = _OPS[name]
  arg = level(tf.constant(float(magnitude)))
  if name == "Cutout":
    return _cutout(image, arg, seed)
  if signed:
    arg = _signed(arg, seed)
  return op(image, arg)


def _cutout(image, pad, seed):
  """Fills a (2 pad)-sided square at a random centre with grey."""
  shape = tf.shape(image)
  centre = tf.random.stateless_uniform([2], seed, maxval=1.0)
  centre = tf.cast(centre * tf.cast(shape[:2], tf.float32), tf.int32)
  pad = tf.cast(pad, tf.int32)
  rows = tf.range(shape[0])[:, None]
  cols = tf.range(shape[1])[None, :]
  inside = (tf.abs(rows - centre[0]) < pad) & (tf.abs(cols - centre[1]) < pad)
  return tf.where(inside[..., None], tf.constant(_FILL, image.dtype), image)


def randaugment(
    image: tf.Tensor, num_layers: int, magnitude: float, seed: tf.Tensor
) -> tf.Tensor:
  """`num_layers` ops, each drawn uniformly from RANDAUGMENT_OPS."""
  seeds = _seeds(seed, 2 * num_layers)
  for layer in range(num_layers):
    choice = tf.random.stateless_uniform(
        [], seeds[2 * layer], maxval=len(_OPS), dtype=tf.int32
    )
    branches = [
        functools.partial(apply_op, n, image, magnitude, seeds[2 * layer + 1])
        for n in _OPS
    ]
    image = tf.switch_case(choice, branches)
    image = tf.ensure_shape(image, [None, None, 3])
  return image


def mixup(
    images_BxHxWxC: tf.Tensor,
    labels_BxC: tf.Tensor,
    alpha: float,
    seed: tf.Tensor,
) -> tuple[tf.Tensor, tf.Tensor]:
  """Mixes each example with the batch reversed, with one lambda ~
  Beta(alpha, alpha) per batch (big_vision's convention); labels are
  (multi-)hot and mix with the same weight."""
  if alpha <= 0:
    return images_BxHxWxC, labels_BxC
  seed_a, seed_b = tf.unstack(_seeds(seed, 2))
  gamma_a = tf.random.stateless_gamma([], seed_a, alpha)
  gamma_b = tf.random.stateless_gamma([], seed_b, alpha)
  lam = gamma_a / (gamma_a + gamma_b)

  def mix(x):
    return lam * x + (1.0 - lam) * tf.reverse(x, [0])

  return mix(images_BxHxWxC), mix(tf.cast(labels_BxC, tf.float32))
