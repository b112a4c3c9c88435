"""Tests for ssdh_jax.preprocessing against per-pixel NumPy formulas and PIL's resize."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssdh_jax import models, preprocessing


@pytest.fixture
def image():
  rng = np.random.default_rng(0)
  return rng.integers(0, 256, size=(2, 5, 6, 3), dtype=np.uint8)


def test_caffe_bgr_channel_means(image):
  out = np.asarray(preprocessing.preprocess(image, "caffe_bgr"))
  assert out.dtype == np.float32 and out.shape == image.shape
  img = image.astype(np.float64)
  np.testing.assert_allclose(out[..., 0], img[..., 2] - 103.939, atol=1e-4)  # B
  np.testing.assert_allclose(out[..., 1], img[..., 1] - 116.779, atol=1e-4)  # G
  np.testing.assert_allclose(out[..., 2], img[..., 0] - 123.68, atol=1e-4)  # R


def test_caffe_bgr_mean_image_centre_crop(image):
  mean = np.random.default_rng(1).uniform(0, 255, size=(9, 10, 3)).astype(np.float32)
  out = np.asarray(preprocessing.preprocess(image, "caffe_bgr", mean_image=mean))
  # (9 − 5) / 2 = 2 rows and (10 − 6) / 2 = 2 columns off each side, as Caffe's centre crop.
  want = image[..., ::-1].astype(np.float32) - mean[2:7, 2:8]
  np.testing.assert_allclose(out, want, rtol=1e-6)
  same_size = np.asarray(preprocessing.preprocess(image, "caffe_bgr", mean_image=mean[2:7, 2:8]))
  np.testing.assert_allclose(same_size, want, rtol=1e-6)
  with pytest.raises(ValueError, match="smaller"):
    preprocessing.preprocess(image, "caffe_bgr", mean_image=mean[:3])


def test_imagenet(image):
  out = np.asarray(preprocessing.preprocess(image, "imagenet"))
  for c, (m, s) in enumerate(zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))):
    np.testing.assert_allclose(out[..., c], (image[..., c] / 255.0 - m) / s, rtol=1e-5, atol=1e-6)


def test_unit_and_float_input(image):
  out = np.asarray(preprocessing.preprocess(image, "unit"))
  np.testing.assert_allclose(out, image / 255.0 - 0.5, atol=1e-7)
  assert out.min() >= -0.5 and out.max() <= 0.5
  as_float = np.asarray(preprocessing.preprocess(image.astype(np.float32), "imagenet"))
  np.testing.assert_allclose(as_float, preprocessing.preprocess(image, "imagenet"), rtol=1e-6)


def test_jittable_and_pure(image):
  fn = jax.jit(preprocessing.preprocess, static_argnames="name")
  for name in preprocessing.PREPROCESSORS:
    np.testing.assert_allclose(
      fn(jnp.asarray(image), name=name), preprocessing.preprocess(image, name), atol=1e-5
    )


def test_defaults_cover_every_backbone():
  for name in models.BACKBONES:
    assert preprocessing.default_preprocess(name) in preprocessing.PREPROCESSORS
  assert preprocessing.default_preprocess("vgg_f") == "caffe_bgr"
  assert preprocessing.default_preprocess("mobilenet_v2") == "imagenet"
  assert preprocessing.default_preprocess("small_cnn") == "unit"
  with pytest.raises(ValueError, match="bogus"):
    preprocessing.preprocess(np.zeros((1, 2, 2, 3)), "bogus")


@pytest.mark.parametrize("h,w", [(300, 451), (427, 640), (256, 256), (500, 260)])
def test_resize_and_centre_crop_shapes_and_pil(h, w):
  pil = pytest.importorskip("PIL.Image")
  # A smooth image, so antialiased bilinear resizers agree closely.
  yy, xx = np.mgrid[0:h, 0:w]
  img = np.stack([127 + 120 * np.sin(yy / 37.0), 127 + 120 * np.cos(xx / 23.0), (yy + xx) % 256], -1)
  img = img.astype(np.uint8)
  out = np.asarray(preprocessing.resize_shorter_and_center_crop(img, 256, 224))
  assert out.shape == (224, 224, 3) and out.dtype == np.float32
  short = min(h, w)
  size = (int(w * 256 / short), 256) if h <= w else (256, int(h * 256 / short))  # PIL takes (width, height)
  ref = np.asarray(pil.fromarray(img).resize(size, pil.BILINEAR), np.float32)
  top, left = round((ref.shape[0] - 224) / 2), round((ref.shape[1] - 224) / 2)
  ref = ref[top : top + 224, left : left + 224]
  assert np.abs(out - ref).mean() < 1.5


def test_crop_without_resize():
  img = np.arange(6 * 8 * 3, dtype=np.float32).reshape(6, 8, 3)
  out = np.asarray(preprocessing.resize_shorter_and_center_crop(img, 0, 4))
  np.testing.assert_array_equal(out, img[1:5, 2:6])
