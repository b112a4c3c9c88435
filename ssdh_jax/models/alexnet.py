"""AlexNet in torchvision's layout (the one-GPU variant: 64-192-384-256-256 filters, no LRN).

  conv1 64×11×11/4 pad 2 → ReLU → max-pool 3/2;  conv2 192×5×5 pad 2 → ReLU → max-pool 3/2;
  conv3 384, conv4 256, conv5 256 (3×3 pad 1, ReLU) → max-pool 3/2 → adaptive avg-pool 6×6;
  dropout → fc6 9216 → 4096 → ReLU → dropout → fc7 4096 → 4096 → ReLU → [fc8 4096 → num_classes].

torchvision key names ↔ Flax names: features.{0,3,6,8,10} ↔ conv1..conv5, classifier.{1,4,6} ↔ fc6, fc7, fc8.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssdh_jax.models import layout
from ssdh_jax.models.layers import RowDropout
from ssdh_jax.models.spec import BackboneSpec, fc_builder

Array = jax.Array


def adaptive_avg_pool(x: Array, out_size: int) -> Array:
  """torch.nn.AdaptiveAvgPool2d: output cell i averages rows floor(i·H/o) … ceil((i+1)·H/o) − 1.

  Args:
    x: (B, H, W, C).
    out_size: o, the output height and width.

  Returns:
    (B, o, o, C). Identity when H == W == o; the cell bounds are static, so this unrolls o² small means.
  """
  _, h, w, _ = x.shape
  if h == out_size and w == out_size:
    return x
  if h % out_size == 0 and w % out_size == 0:
    return x.reshape(x.shape[0], out_size, h // out_size, out_size, w // out_size, x.shape[-1]).mean((2, 4))

  def bounds(i: int, n: int) -> tuple[int, int]:
    return (i * n) // out_size, -((-(i + 1) * n) // out_size)

  rows = []
  for i in range(out_size):
    r0, r1 = bounds(i, h)
    cols = []
    for j in range(out_size):
      c0, c1 = bounds(j, w)
      cols.append(x[:, r0:r1, c0:c1, :].mean(axis=(1, 2)))
    rows.append(jnp.stack(cols, axis=1))
  return jnp.stack(rows, axis=1)


class AlexNet(nn.Module):
  """torchvision AlexNet backbone.

  Attributes:
    num_classes: 0 → return relu(fc7) features (B, 4096); > 0 → fc8 logits (B, num_classes).
    dropout: rate of the dropouts before fc6 and fc7 (torchvision: 0.5); masks drawn per global row.
    axis_name: the device axis the batch is split over (`RowDropout`).
    dtype: compute dtype; param_dtype: parameter dtype.
  """

  num_classes: int = 0
  dropout: float = 0.5
  axis_name: str | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    """x: (B, H, W, 3) ImageNet-normalised RGB (224 nominal). Returns (B, 4096) or (B, num_classes)."""

    def conv(features, kernel, stride, pad, name):
      return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name=name,
      )

    pool = lambda y: nn.max_pool(y, (3, 3), (2, 2))  # torch rounds pooling sizes down (VALID)
    x = x.astype(self.dtype)
    x = pool(nn.relu(conv(64, 11, 4, 2, "conv1")(x)))
    x = pool(nn.relu(conv(192, 5, 1, 2, "conv2")(x)))
    x = nn.relu(conv(384, 3, 1, 1, "conv3")(x))
    x = nn.relu(conv(256, 3, 1, 1, "conv4")(x))
    x = pool(nn.relu(conv(256, 3, 1, 1, "conv5")(x)))
    x = adaptive_avg_pool(x, 6)
    x = x.reshape(x.shape[0], -1)  # (H, W, C) order; weights.py permutes torch's (C, H, W) fc6 columns
    dense = lambda n, name: nn.Dense(n, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    x = nn.relu(dense(4096, "fc6")(RowDropout(self.dropout, self.axis_name, deterministic=not train)(x)))
    x = nn.relu(dense(4096, "fc7")(RowDropout(self.dropout, self.axis_name, deterministic=not train)(x)))
    if self.num_classes:
      x = dense(self.num_classes, "fc8")(x)
    return x


def torch_layout() -> list[layout.Layer]:
  """torchvision's alexnet state dict onto AlexNet's modules."""
  convs = [
    layout.Layer(f"features.{i}", (f"conv{n}",), layout.CONV) for n, i in enumerate((0, 3, 6, 8, 10), start=1)
  ]
  return [
    *convs,
    layout.Layer("classifier.1", ("fc6",), (layout.chw_linear(256), layout.BIAS)),
    layout.Layer("classifier.4", ("fc7",), layout.LINEAR),
    layout.Layer("classifier.6", ("fc8",), layout.LINEAR, classifier=True),
  ]


BACKBONES = {
  "alexnet": BackboneSpec(
    fc_builder("alexnet", AlexNet),
    224,
    4096,
    preprocess="imagenet",
    torch_layout=torch_layout,
    torchvision_url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
  ),
}
