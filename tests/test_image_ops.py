"""Image preprocessing ops: shapes, determinism, eager == inside tf.data."""

import numpy as np
import pytest
import tensorflow as tf

from adatape.data import image_ops as ops

SEED = tf.constant([3, 7], tf.int64)


def _image(h=48, w=64, seed=0):
  return tf.constant(
      np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
  )


def _in_dataset(fn, image):
  """`fn(image)` run inside a tf.data map (graph mode)."""
  ds = tf.data.Dataset.from_tensors(image).map(fn)
  return next(iter(ds)).numpy()


def test_inception_crop_is_seeded_and_resized():
  image = _image()
  a = ops.inception_crop(image, 32, SEED)
  assert a.shape == (32, 32, 3) and a.dtype == tf.uint8
  np.testing.assert_array_equal(a, ops.inception_crop(image, 32, SEED))
  np.testing.assert_array_equal(
      a, _in_dataset(lambda x: ops.inception_crop(x, 32, SEED), image)
  )
  others = [
      ops.inception_crop(image, 32, tf.constant([s, 0], tf.int64))
      for s in range(5)
  ]
  assert any(not np.array_equal(a, o) for o in others)


@pytest.mark.parametrize("jpeg", [True, False])
def test_decode_and_crop_matches_crop_of_the_decoded_image(jpeg):
  # A smooth image: JPEG keeps it close, and the windowed JPEG decode then
  # equals the full decode on the window (same seed -> same window).
  y, x = np.mgrid[0:60, 0:90]
  image = np.stack([y * 4, x * 2, (x + y) * 2], -1).astype(np.uint8)
  data = (
      tf.io.encode_jpeg(image, quality=95) if jpeg else tf.io.encode_png(image)
  )
  for s in range(4):
    seed = tf.constant([s, 1], tf.int64)
    fused = ops.decode_inception_crop(data, 32, seed, jpeg)
    reference = ops.inception_crop(ops.decode(data), 32, seed)
    assert fused.shape == (32, 32, 3) and fused.dtype == tf.uint8
    diff = np.abs(fused.numpy().astype(int) - reference.numpy().astype(int))
    assert diff.max() <= (2 if jpeg else 0), diff.max()
    np.testing.assert_array_equal(
        fused,
        _in_dataset(
            lambda d, seed=seed: ops.decode_inception_crop(d, 32, seed, jpeg),
            data,
        ),
    )


def test_crop_area_stays_in_range():
  # Row index in the red channel, column index in green: a crop's range
  # of values gives its extent.
  rows, cols = np.meshgrid(np.arange(100), np.arange(100), indexing="ij")
  image = tf.constant(np.stack([rows, cols, rows * 0], -1).astype(np.uint8))
  for s in range(20):
    crop = ops.inception_crop(
        image, 16, tf.constant([s, 1], tf.int64), area_min=0.3, area_max=0.5
    ).numpy()
    h = int(crop[..., 0].max()) - int(crop[..., 0].min()) + 1
    w = int(crop[..., 1].max()) - int(crop[..., 1].min()) + 1
    assert 0.2 <= h * w / 100**2 <= 0.6, (h, w)


def test_eval_resize_and_central_crop():
  image = _image(100, 200)
  small = ops.resize_small(image, 50)
  assert small.shape == (50, 100, 3)
  rows, cols = np.meshgrid(np.arange(10), np.arange(20), indexing="ij")
  grid = tf.constant(np.stack([rows, cols, rows], -1).astype(np.uint8))
  crop = ops.central_crop(grid, 4).numpy()
  np.testing.assert_array_equal(crop[:, :, 0][:, 0], [3, 4, 5, 6])
  np.testing.assert_array_equal(crop[:, :, 1][0], [8, 9, 10, 11])


def test_value_range_and_flip():
  image = tf.constant([[[0, 255, 51]]], tf.uint8)
  np.testing.assert_allclose(
      ops.value_range(image).numpy()[0, 0], [-1.0, 1.0, -0.6], atol=1e-6
  )
  image = _image(8, 8)
  flips = {
      bool(
          np.array_equal(
              ops.random_flip(image, tf.constant([s, 0], tf.int64)),
              image[:, ::-1],
          )
      )
      for s in range(10)
  }
  assert flips == {True, False}


@pytest.mark.parametrize("name", ops.RANDAUGMENT_OPS)
def test_every_randaugment_op_keeps_shape_and_runs_in_tf_data(name):
  image = _image()
  eager = ops.apply_op(name, image, 15, SEED)
  assert eager.shape == image.shape and eager.dtype == tf.uint8
  graph = _in_dataset(lambda x: ops.apply_op(name, x, 15, SEED), image)
  np.testing.assert_array_equal(eager, graph)


@pytest.mark.parametrize(
    "name", ["Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY", "Cutout"]
)
def test_geometric_ops_at_magnitude_zero_are_identity(name):
  image = _image()
  np.testing.assert_array_equal(ops.apply_op(name, image, 0, SEED), image)


def test_op_semantics_hand_cases():
  image = _image()
  np.testing.assert_array_equal(
      ops.apply_op("Invert", image, 5, SEED), 255 - image.numpy()
  )
  # Posterize at level 15 keeps int(1.5 * 4) = 6 bits.
  np.testing.assert_array_equal(
      ops.apply_op("Posterize", image, 15, SEED), image.numpy() & 0b11111100
  )
  # TranslateX by level 5 moves 50 pixels; the uncovered part is grey.
  moved = ops.apply_op("TranslateX", image, 5, SEED).numpy()
  assert np.all((moved[:, :50] == 128) | (moved[:, -50:] == 128))
  # Brightness at level 5: factor 1.0, the identity.
  np.testing.assert_array_equal(
      ops.apply_op("Brightness", image, 5, SEED), image
  )


def test_randaugment_is_seeded_and_equal_inside_tf_data():
  image = _image()
  a = ops.randaugment(image, 2, 15, SEED)
  np.testing.assert_array_equal(a, ops.randaugment(image, 2, 15, SEED))
  np.testing.assert_array_equal(
      a, _in_dataset(lambda x: ops.randaugment(x, 2, 15, SEED), image)
  )
  outs = {
      ops.randaugment(image, 2, 15, tf.constant([s, 5], tf.int64))
      .numpy()
      .tobytes()
      for s in range(8)
  }
  assert len(outs) > 4


def test_mixup_mixes_images_and_labels_with_one_weight():
  images = (
      tf.ones([4, 2, 2, 3]) * tf.range(4, dtype=tf.float32)[:, None, None, None]
  )
  labels = tf.one_hot([0, 1, 2, 3], 5)
  mixed, soft = ops.mixup(images, labels, 0.5, SEED)
  np.testing.assert_allclose(soft.numpy().sum(1), 1.0, rtol=1e-6)
  lam = soft.numpy()[0, 0]
  assert 0.0 <= lam <= 1.0
  np.testing.assert_allclose(soft.numpy()[0, 3], 1 - lam, rtol=1e-6)
  np.testing.assert_allclose(
      mixed.numpy()[:, 0, 0, 0],
      lam * np.arange(4) + (1 - lam) * np.arange(4)[::-1],
      rtol=1e-5,
  )
  same, hard = ops.mixup(images, labels, 0.0, SEED)
  np.testing.assert_array_equal(same, images)
  np.testing.assert_array_equal(hard, labels)
