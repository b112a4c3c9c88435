"""Model registry: backbones (`build_backbone`) and the SSDH hashing model (`build_model`).

Backbones: vgg_f (Caffe CNN-F), alexnet, vgg16, vgg19, mobilenet_v2 (torchvision layouts), small_cnn.
Each backbone is `module(images (B, H, W, 3), train=bool)`; with num_classes == 0 it returns fc7-like features
(B, F), with num_classes > 0 it also applies its ImageNet-style classifier and returns logits (B, num_classes).
Each backbone module declares `BACKBONES = {name: spec.BackboneSpec}` (builder, defaults, weight layout and
where its weights come from); the registry is built from those declarations.
"""

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssdh_jax.models import alexnet, mobilenet_v2, small_cnn, vgg, vgg_f
from ssdh_jax.models.alexnet import AlexNet
from ssdh_jax.models.heads import HashingModel, Passthrough
from ssdh_jax.models.mobilenet_v2 import MobileNetV2
from ssdh_jax.models.small_cnn import SmallCNN
from ssdh_jax.models.spec import BackboneSpec
from ssdh_jax.models.vgg import VGG
from ssdh_jax.models.vgg_f import VGGF
from ssdh_jax.registry import Registry

_SPECS: Registry[BackboneSpec] = Registry("backbone", how="ssdh_jax.models.register_backbone(name, spec)")


def register_backbone(name: str, spec: BackboneSpec) -> BackboneSpec:
  """Makes `name` a valid config.model.name (training, evaluation, search). Returns `spec`.

  From the command line: register it in a module passed with `--module path/to/file.py` to train.py; the run
  folder records the module (modules.json), so eval.py and ssdh-search on that folder import it again.
  """
  return _SPECS.add(name, spec)


def backbone_spec(name: str) -> BackboneSpec:
  """The spec registered under `name`; ValueError listing the registered backbones if none."""
  return _SPECS.get(name)


def available_backbones() -> tuple[str, ...]:
  """Registered backbone names (built-in ones first, in registration order)."""
  return _SPECS.names()


for _module in (vgg_f, alexnet, vgg, mobilenet_v2, small_cnn):
  for _name, _spec in _module.BACKBONES.items():
    register_backbone(_name, _spec)

# Views of the built-in backbones (benches and tests read them; `backbone_spec` also knows registered ones).
BACKBONES = available_backbones()
DEFAULT_IMAGE_SIZE = {n: backbone_spec(n).image_size for n in BACKBONES}
FEATURE_DIM = {n: backbone_spec(n).feature_dim for n in BACKBONES if backbone_spec(n).feature_dim}
HAS_BATCH_NORM = frozenset(n for n in BACKBONES if backbone_spec(n).batch_norm)


def backbone_layers(name: str) -> tuple[str, ...]:
  """The backbone's top-level layers in forward order (the names params['backbone'] uses); () when it cannot
  be sliced by layer."""
  return backbone_spec(name).layers


def build_backbone(
  name: str,
  *,
  num_classes: int = 0,
  dropout: float = 0.5,
  width: int = 32,
  dtype: Any = "float32",
  param_dtype: Any = "float32",
  axis_name: str | None = None,
  depthwise: str = "auto",
  pointwise: str = "auto",
  layers: tuple[int, int, int] | None = None,
) -> nn.Module:
  """A backbone by registry name (`register_backbone`).

  Args:
    name: a registered backbone (built in: vgg_f, alexnet, vgg16, vgg19, mobilenet_v2, small_cnn).
    num_classes: 0 for a feature extractor; e.g. 1000 to keep the ImageNet classifier (pretrained top-1).
    dropout: rate of the fc dropouts (vgg_f, alexnet, vgg16/19, small_cnn; mobilenet_v2 keeps torchvision's
      0.2 before its classifier).
    width: small_cnn base width.
    dtype, param_dtype: compute and parameter dtypes (names or dtypes).
    axis_name: the device axis the batch is split over: cross-device BatchNorm statistics (mobilenet_v2,
      small_cnn) and dropout masks numbered by global row (`layers.RowDropout`).
    depthwise: mobilenet_v2's depthwise convolution: auto | conv | shift (ssdh_jax.models.depthwise).
    pointwise: mobilenet_v2's 1×1 convolutions: auto | conv | dot (ssdh_jax.models.pointwise).
    layers: (input_layer, output_layer, train_from) indices into backbone_layers(name): the slice of layers
      the module runs (its input is the activation entering input_layer; output_layer < len(layers) returns
      the activation entering that layer, unpooled) and the first layer that trains (those before it run in
      inference mode: BatchNorm running statistics). None: the whole backbone, all trainable.
  """
  return backbone_spec(name).build(
    num_classes=num_classes,
    dropout=dropout,
    width=width,
    dtype=jnp.dtype(dtype),
    param_dtype=jnp.dtype(param_dtype),
    axis_name=axis_name,
    depthwise=depthwise,
    pointwise=pointwise,
    layers=layers,
  )


def first_trainable_layer(model_cfg: Mapping[str, Any]) -> int:
  """Index into backbone_layers of the first trainable backbone layer (model.trainable); len(layers) or, for
  backbones without a layer list, 1 means the whole backbone is frozen ('heads')."""
  from ssdh_jax import optim

  layers = backbone_layers(model_cfg["name"])
  spec = model_cfg["trainable"] if "trainable" in model_cfg else optim.ALL
  if spec == optim.HEADS and not layers:
    return 1
  return optim.trainable_start(spec, layers, model_cfg["name"])


# config.model fields that `build_backbone` takes; a field a partial mapping (a test, a script) leaves out gets
# build_backbone's documented default, stated once, in its signature.
_BACKBONE_FIELDS = ("dropout", "width", "dtype", "param_dtype", "depthwise", "pointwise")


def _backbone(model_cfg: Mapping[str, Any], axis_name: str | None, layers: tuple[int, int, int] | None):
  given = {k: model_cfg[k] for k in _BACKBONE_FIELDS if k in model_cfg}
  return build_backbone(model_cfg["name"], num_classes=0, axis_name=axis_name, layers=layers, **given)


def build_model(
  model_cfg: Mapping[str, Any], axis_name: str | None = None, *, input_layer: int = 0
) -> HashingModel:
  """The hashing model from `config.model` (fields name, bits, num_classes, dropout, width, dtype, param_dtype,
  depthwise, pointwise, trainable).

  The backbone's own ImageNet classifier is dropped; its params live under params['backbone'], the heads
  under params['hash'] and params['classifier']. Frozen backbone layers (model.trainable) run in inference
  mode. input_layer > 0: the model takes the activation entering that backbone layer instead of images (the
  suffix after a cached frozen prefix, see `build_prefix`); it reads the full model's variables unchanged.
  """
  layers = backbone_layers(model_cfg["name"])
  start = first_trainable_layer(model_cfg)
  if not layers:
    if input_layer:  # a frozen backbone whose cached output feeds the heads directly
      return _heads_model(model_cfg, Passthrough())
    return _heads_model(model_cfg, _backbone(model_cfg, axis_name, None), freeze_backbone=start > 0)
  if input_layer > start:
    raise ValueError(f"input_layer {input_layer} is past the first trainable layer {start}")
  return _heads_model(model_cfg, _backbone(model_cfg, axis_name, (input_layer, len(layers), start)))


def _heads_model(model_cfg: Mapping[str, Any], backbone: nn.Module, freeze_backbone: bool = False):
  return HashingModel(
    backbone=backbone,
    bits=int(model_cfg["bits"]),
    freeze_backbone=freeze_backbone,
    **({"num_classes": int(model_cfg["num_classes"])} if "num_classes" in model_cfg else {}),
    **({"param_dtype": jnp.dtype(model_cfg["param_dtype"])} if "param_dtype" in model_cfg else {}),
  )


def build_prefix(model_cfg: Mapping[str, Any]) -> tuple[nn.Module, int]:
  """The frozen prefix of the backbone and the layer index its output enters.

  Apply as `prefix.apply({'params': params['backbone'], 'batch_stats': batch_stats['backbone']}, images,
  train=False)`; `build_model(model_cfg, input_layer=index)` continues from its output. The whole backbone
  (index = len(layers), or 1 for backbones without a layer list) when only the heads train.
  """
  layers = backbone_layers(model_cfg["name"])
  start = first_trainable_layer(model_cfg)
  if start == 0:
    raise ValueError("config.model.trainable='all': the backbone has no frozen prefix to cache")
  if not layers:
    return _backbone(model_cfg, None, None), 1
  return _backbone(model_cfg, None, (0, start, start)), start


def init_variables(model: nn.Module, key: jax.Array, image_size: int, batch: int = 2) -> dict[str, Any]:
  """Initialise `model` on a zero batch (batch, image_size, image_size, 3) with train=False.

  Returns:
    The variables dict: {'params': …} plus {'batch_stats': …} for BatchNorm models.
  """
  params_key, dropout_key = jax.random.split(key)
  x = jnp.zeros((batch, image_size, image_size, 3), jnp.float32)
  init = jax.jit(lambda k1, k2, x: model.init({"params": k1, "dropout": k2}, x, train=False))
  # The initialiser runs once: compiling it without backend optimisations cuts its compile time on CPU
  # (bench/bench_startup.py) for a program that then takes well under a second.
  if isinstance(params_key, jax.core.Tracer):  # under a transformation (e.g. eval_shape): no compile here
    return dict(init(params_key, dropout_key, x))
  compiled = init.lower(params_key, dropout_key, x).compile(compiler_options=INIT_COMPILER_OPTIONS)
  return dict(compiled(params_key, dropout_key, x))


def variable_shapes(model: nn.Module, image_size: int, batch: int = 2) -> dict[str, Any]:
  """`init_variables`'s result as `jax.ShapeDtypeStruct`s: nothing is compiled or drawn."""
  return jax.eval_shape(lambda k: init_variables(model, k, image_size, batch), jax.random.key(0))


# Backend options for the one-off initialiser. The values it draws are bit-for-bit reproducible under these
# options, but may differ by an ulp from a default-optimised compile of the same function.
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


__all__ = [
  "BACKBONES",
  "DEFAULT_IMAGE_SIZE",
  "FEATURE_DIM",
  "HAS_BATCH_NORM",
  "VGG",
  "VGGF",
  "AlexNet",
  "BackboneSpec",
  "HashingModel",
  "MobileNetV2",
  "SmallCNN",
  "available_backbones",
  "backbone_layers",
  "backbone_spec",
  "build_backbone",
  "build_model",
  "build_prefix",
  "first_trainable_layer",
  "init_variables",
  "register_backbone",
  "variable_shapes",
]
