"""Per-backbone input normalisation and resize/crop, as pure jax.numpy functions.

'caffe_bgr'  VGG-F (Caffe): RGB → BGR, 0–255, minus the BGR mean image (or the per-channel ImageNet mean
             [103.939, 116.779, 123.68]); no std scaling. Output channels are B, G, R.
'imagenet'   torchvision models: x/255, minus [0.485, 0.456, 0.406], divided by [0.229, 0.224, 0.225] (RGB).
'unit'       from-scratch models: x/255 − 0.5.
"""

import jax
import jax.numpy as jnp

Array = jax.Array

CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PREPROCESSORS = ("caffe_bgr", "imagenet", "unit")


def default_preprocess(model_name: str) -> str:
  """The preprocessing a backbone's pretrained weights expect (its registry entry; 'unit' for unknown names)."""
  from ssdh_jax import models  # lazy: models does not need preprocessing, this keeps the import one-way

  try:
    return models.backbone_spec(model_name).preprocess
  except ValueError:
    return "unit"


def _center_crop(x: Array, h: int, w: int) -> Array:
  top, left = round((x.shape[-3] - h) / 2), round((x.shape[-2] - w) / 2)  # torchvision rounds the offsets
  return x[..., top : top + h, left : left + w, :]


def preprocess(images: Array, name: str, mean_image: Array | None = None) -> Array:
  """Normalises RGB images for a backbone.

  Args:
    images: (..., H, W, 3) RGB, uint8 or float in [0, 255].
    name: 'caffe_bgr' | 'imagenet' | 'unit'.
    mean_image: 'caffe_bgr' only: a BGR mean image (Hm, Wm, 3) in 0–255 (Caffe's mean.binaryproto, HWC).
      When larger than the input, its centre crop is used (what Caffe's test-time crop subtracts).

  Returns:
    (..., H, W, 3) float32; channel order BGR for 'caffe_bgr', RGB otherwise.
  """
  x = jnp.asarray(images).astype(jnp.float32)
  if name == "caffe_bgr":
    x = x[..., ::-1]
    if mean_image is None:
      return x - jnp.asarray(CAFFE_BGR_MEAN, jnp.float32)
    mean = jnp.asarray(mean_image, jnp.float32)
    if mean.shape[:2] != x.shape[-3:-1]:
      if mean.shape[0] < x.shape[-3] or mean.shape[1] < x.shape[-2]:
        raise ValueError(f"mean image {mean.shape} is smaller than the input {x.shape[-3:]}")
      mean = _center_crop(mean, x.shape[-3], x.shape[-2])
    return x - mean
  if name == "imagenet":
    return (x / 255.0 - jnp.asarray(IMAGENET_MEAN, jnp.float32)) / jnp.asarray(IMAGENET_STD, jnp.float32)
  if name == "unit":
    return x / 255.0 - 0.5
  raise ValueError(f"unknown preprocessing {name!r}; expected one of {PREPROCESSORS}")


def resize_shorter_and_center_crop(image: Array, resize_size: int, crop_size: int) -> Array:
  """torchvision's eval transform Resize(resize_size) + CenterCrop(crop_size) for one image.

  Args:
    image: (H, W, C) uint8 or float.
    resize_size: target length of the shorter side (0: no resize).
    crop_size: side of the square centre crop.

  Returns:
    (crop_size, crop_size, C) float32 in the input's value range (antialiased bilinear resize).
  """
  x = jnp.asarray(image).astype(jnp.float32)
  h, w = x.shape[:2]
  if resize_size:
    scale = resize_size / min(h, w)
    # torchvision truncates the long side: int(long * short_target / short).
    nh, nw = (resize_size, int(w * scale)) if h <= w else (int(h * scale), resize_size)
    x = jax.image.resize(x, (nh, nw, x.shape[2]), method="linear", antialias=True)
  return _center_crop(x, crop_size, crop_size)
