"""VGG-16 / VGG-19 (configurations D and E, no BatchNorm) in torchvision's layout.

  13 or 16 conv 3×3 pad 1 + ReLU in 5 stages, each ending in max-pool 2/2 → adaptive avg-pool 7×7;
  fc6 25088 → 4096 → ReLU → dropout → fc7 4096 → 4096 → ReLU → dropout → [fc8 4096 → num_classes].

Flax names: conv{stage}_{i} (conv1_1 … conv5_3/conv5_4), fc6, fc7, fc8. `torch_conv_indices(depth)` gives the
torchvision `features.{n}` index of each conv in order; classifier.{0,3,6} ↔ fc6, fc7, fc8.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssdh_jax.models import layout
from ssdh_jax.models.alexnet import adaptive_avg_pool
from ssdh_jax.models.layers import RowDropout
from ssdh_jax.models.spec import BackboneSpec, fc_builder

Array = jax.Array

STAGES = {16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
WIDTHS = (64, 128, 256, 512, 512)


def conv_names(depth: int) -> list[str]:
  """Flax names of the conv layers in order, e.g. ['conv1_1', 'conv1_2', 'conv2_1', …]."""
  return [f"conv{s + 1}_{i + 1}" for s, n in enumerate(STAGES[depth]) for i in range(n)]


def torch_conv_indices(depth: int) -> list[int]:
  """torchvision `features` index of each conv: every conv is followed by a ReLU, every stage by a pool."""
  idx, pos = [], 0
  for n in STAGES[depth]:
    for _ in range(n):
      idx.append(pos)
      pos += 2
    pos += 1
  return idx


class VGG(nn.Module):
  """torchvision VGG backbone.

  Attributes:
    depth: 16 or 19.
    num_classes: 0 → dropout(relu(fc7)) features (B, 4096); > 0 → fc8 logits (B, num_classes).
    dropout: rate after fc6 and fc7 (torchvision: 0.5); masks drawn per global row (`RowDropout`).
    axis_name: the device axis the batch is split over (for the dropout masks).
    dtype: compute dtype; param_dtype: parameter dtype.
  """

  depth: int = 16
  num_classes: int = 0
  dropout: float = 0.5
  axis_name: str | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    """x: (B, H, W, 3) ImageNet-normalised RGB (224 nominal). Returns (B, 4096) or (B, num_classes)."""
    x = x.astype(self.dtype)
    names = iter(conv_names(self.depth))
    for width, n in zip(WIDTHS, STAGES[self.depth]):
      for _ in range(n):
        conv = nn.Conv(
          width,
          (3, 3),
          padding=((1, 1), (1, 1)),
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          name=next(names),
        )
        x = nn.relu(conv(x))
      x = nn.max_pool(x, (2, 2), (2, 2))
    x = adaptive_avg_pool(x, 7)
    x = x.reshape(x.shape[0], -1)  # (H, W, C) order; weights.py permutes torch's (C, H, W) fc6 columns
    dense = lambda n, name: nn.Dense(n, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    x = RowDropout(self.dropout, self.axis_name, deterministic=not train)(nn.relu(dense(4096, "fc6")(x)))
    x = RowDropout(self.dropout, self.axis_name, deterministic=not train)(nn.relu(dense(4096, "fc7")(x)))
    if self.num_classes:
      x = dense(self.num_classes, "fc8")(x)
    return x


def torch_layout(depth: int) -> list[layout.Layer]:
  """torchvision's vgg16 / vgg19 state dict onto VGG's modules."""
  convs = [
    layout.Layer(f"features.{i}", (name,), layout.CONV)
    for i, name in zip(torch_conv_indices(depth), conv_names(depth))
  ]
  return [
    *convs,
    layout.Layer("classifier.0", ("fc6",), (layout.chw_linear(512), layout.BIAS)),
    layout.Layer("classifier.3", ("fc7",), layout.LINEAR),
    layout.Layer("classifier.6", ("fc8",), layout.LINEAR, classifier=True),
  ]


_URLS = {
  16: "https://download.pytorch.org/models/vgg16-397923af.pth",
  19: "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
}
BACKBONES = {
  f"vgg{depth}": BackboneSpec(
    fc_builder(f"vgg{depth}", VGG, depth=depth),
    224,
    4096,
    preprocess="imagenet",
    torch_layout=functools.partial(torch_layout, depth),
    torchvision_url=url,
  )
  for depth, url in _URLS.items()
}
