"""Model registry: backbones (`build_backbone`) and the SSDH hashing model (`build_model`).

Backbones: vgg_f (Caffe CNN-F), alexnet, vgg16, vgg19, mobilenet_v2 (torchvision layouts), small_cnn.
Each backbone is `module(images (B, H, W, 3), train=bool)`; with num_classes == 0 it returns fc7-like features
(B, F), with num_classes > 0 it also applies its ImageNet-style classifier and returns logits (B, num_classes).
"""

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssdh_jax.models.alexnet import AlexNet
from ssdh_jax.models.heads import HashingModel
from ssdh_jax.models.mobilenet_v2 import MobileNetV2
from ssdh_jax.models.small_cnn import SmallCNN
from ssdh_jax.models.vgg import VGG
from ssdh_jax.models.vgg_f import VGGF

BACKBONES = ("vgg_f", "alexnet", "vgg16", "vgg19", "mobilenet_v2", "small_cnn")

# Nominal input size (after crop) and feature width F of each backbone.
DEFAULT_IMAGE_SIZE = {
  "vgg_f": 224,
  "alexnet": 224,
  "vgg16": 224,
  "vgg19": 224,
  "mobilenet_v2": 224,
  "small_cnn": 32,
}
FEATURE_DIM = {"vgg_f": 4096, "alexnet": 4096, "vgg16": 4096, "vgg19": 4096, "mobilenet_v2": 1280}

# Backbones that carry BatchNorm state (apply with mutable=['batch_stats'] when train=True).
HAS_BATCH_NORM = frozenset({"mobilenet_v2", "small_cnn"})


def build_backbone(
  name: str,
  *,
  num_classes: int = 0,
  dropout: float = 0.5,
  width: int = 32,
  dtype: Any = "float32",
  param_dtype: Any = "float32",
  axis_name: str | None = None,
) -> nn.Module:
  """A backbone by registry name.

  Args:
    name: one of BACKBONES.
    num_classes: 0 for a feature extractor; e.g. 1000 to keep the ImageNet classifier (pretrained top-1).
    dropout: rate of the fc dropouts (vgg_f, alexnet, vgg16/19, small_cnn; mobilenet_v2 keeps torchvision's
      0.2 before its classifier).
    width: small_cnn base width.
    dtype, param_dtype: compute and parameter dtypes (names or dtypes).
    axis_name: device axis for cross-device BatchNorm statistics (mobilenet_v2, small_cnn).
  """
  dtype, param_dtype = jnp.dtype(dtype), jnp.dtype(param_dtype)
  common = dict(num_classes=num_classes, dtype=dtype, param_dtype=param_dtype)
  if name == "vgg_f":
    return VGGF(dropout=dropout, **common)
  if name == "alexnet":
    return AlexNet(dropout=dropout, **common)
  if name in ("vgg16", "vgg19"):
    return VGG(depth=int(name[3:]), dropout=dropout, **common)
  if name == "mobilenet_v2":
    return MobileNetV2(axis_name=axis_name, **common)
  if name == "small_cnn":
    return SmallCNN(width=width, dropout=dropout, axis_name=axis_name, **common)
  raise ValueError(f"unknown backbone {name!r}; expected one of {BACKBONES}")


def build_model(model_cfg: Mapping[str, Any], axis_name: str | None = None) -> HashingModel:
  """The hashing model from `config.model` (fields name, bits, num_classes, dropout, width, dtype, param_dtype).

  The backbone's own ImageNet classifier is dropped; its params live under params['backbone'], the heads
  under params['hash'] and params['classifier'].
  """
  backbone = build_backbone(
    model_cfg["name"],
    num_classes=0,
    dropout=model_cfg.get("dropout", 0.5),
    width=model_cfg.get("width", 32),
    dtype=model_cfg.get("dtype", "float32"),
    param_dtype=model_cfg.get("param_dtype", "float32"),
    axis_name=axis_name,
  )
  return HashingModel(
    backbone=backbone,
    bits=int(model_cfg["bits"]),
    num_classes=int(model_cfg.get("num_classes", 0)),
    param_dtype=jnp.dtype(model_cfg.get("param_dtype", "float32")),
  )


def init_variables(model: nn.Module, key: jax.Array, image_size: int, batch: int = 2) -> dict[str, Any]:
  """Initialise `model` on a zero batch (batch, image_size, image_size, 3) with train=False.

  Returns:
    The variables dict: {'params': …} plus {'batch_stats': …} for BatchNorm models.
  """
  params_key, dropout_key = jax.random.split(key)
  x = jnp.zeros((batch, image_size, image_size, 3), jnp.float32)
  init = jax.jit(lambda k1, k2, x: model.init({"params": k1, "dropout": k2}, x, train=False))
  return dict(init(params_key, dropout_key, x))


__all__ = [
  "BACKBONES",
  "DEFAULT_IMAGE_SIZE",
  "FEATURE_DIM",
  "HAS_BATCH_NORM",
  "VGG",
  "VGGF",
  "AlexNet",
  "HashingModel",
  "MobileNetV2",
  "SmallCNN",
  "build_backbone",
  "build_model",
  "init_variables",
]
