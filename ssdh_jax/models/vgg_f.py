"""VGG-F / CNN-F (Chatfield et al. 2014), faithful to the Caffe model the SSDH release fine-tunes.

Layer arithmetic at 224×224 (Caffe rounds pooling outputs UP):
  conv1 64×11×11/4, no pad        224 → 54   → ReLU → LRN → max-pool 3×3/2 (ceil) → 27
  conv2 256×5×5, pad 2             27 → 27   → ReLU → LRN → max-pool 3×3/2 (ceil) → 13
  conv3–5 256×3×3, pad 1           13 → 13   → ReLU each              → max-pool 3×3/2 (ceil) → 6
  fc6 256·6·6 → 4096 → ReLU → dropout;  fc7 4096 → 4096 → ReLU → dropout;  [fc8 4096 → num_classes]

Inputs are BGR, 0–255, mean-subtracted (`preprocessing.preprocess(x, 'caffe_bgr')`).
The pretrained-weight layout (.npz) is documented in `ssdh_jax.weights`.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssdh_jax.models import layout
from ssdh_jax.models.layers import RowDropout
from ssdh_jax.models.spec import BackboneSpec, fc_builder

Array = jax.Array


def lrn_caffe(
  x: Array, local_size: int = 5, alpha: float = 5e-4, beta: float = 0.75, k: float = 2.0
) -> Array:
  """Caffe's across-channel LRN: b_c = a_c / (k + alpha/n · Σ_{|j−c|≤n//2} a_j²)^beta.

  Channels outside [0, C) count as zero (Caffe pads the squared input with zeros).

  Args:
    x: (B, H, W, C) activations, any float dtype.
    local_size: window n over channels (odd).
    alpha, beta, k: Caffe's LRN parameters (VGG-F: 5e-4, 0.75, 2).

  Returns:
    (B, H, W, C) in x's dtype; the sum and power are computed in float32 for bf16 safety.
  """
  xf = x.astype(jnp.float32)
  half = local_size // 2
  sq_sum = jax.lax.reduce_window(
    xf * xf, 0.0, jax.lax.add, (1, 1, 1, local_size), (1, 1, 1, 1), ((0, 0), (0, 0), (0, 0), (half, half))
  )
  return (xf / (k + (alpha / local_size) * sq_sum) ** beta).astype(x.dtype)


def ceil_pool_size(size: int, window: int, stride: int, pad: int = 0) -> int:
  """Caffe's pooling output size: ceil((size + 2·pad − window) / stride) + 1, minus the window that would
  start inside the bottom/right padding only."""
  out = math.ceil((size + 2 * pad - window) / stride) + 1
  if pad > 0 and (out - 1) * stride >= size + pad:
    out -= 1
  return out


def max_pool_ceil(x: Array, window: int = 3, stride: int = 2) -> Array:
  """Max-pooling with Caffe's ceil rounding (no explicit pad): the last window may hang over the
  bottom/right edge; the missing cells are −inf, so it takes the max of the cells that exist.

  Args:
    x: (B, H, W, C).

  Returns:
    (B, ceil_pool_size(H), ceil_pool_size(W), C), same dtype.
  """
  _, h, w, _ = x.shape
  oh, ow = ceil_pool_size(h, window, stride), ceil_pool_size(w, window, stride)
  extra_h = max(0, (oh - 1) * stride + window - h)
  extra_w = max(0, (ow - 1) * stride + window - w)
  # nn.max_pool pads with the reduction's identity (−inf), exactly Caffe's behaviour.
  return nn.max_pool(x, (window, window), (stride, stride), padding=((0, extra_h), (0, extra_w)))


class VGGF(nn.Module):
  """VGG-F backbone.

  Attributes:
    num_classes: 0 → return fc7 features (B, 4096); > 0 → also apply fc8 and return its logits (B, num_classes).
    dropout: dropout rate after fc6 and fc7 (Caffe: 0.5); active only when train=True (rng 'dropout'); masks
      drawn per global row.
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
    """x: (B, 224, 224, 3) preprocessed BGR. Returns (B, 4096) features or (B, num_classes) logits."""

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

    x = x.astype(self.dtype)
    x = nn.relu(conv(64, 11, 4, 0, "conv1")(x))
    x = max_pool_ceil(lrn_caffe(x))
    self.sow("intermediates", "pool1", x)
    x = nn.relu(conv(256, 5, 1, 2, "conv2")(x))
    x = max_pool_ceil(lrn_caffe(x))
    self.sow("intermediates", "pool2", x)
    x = nn.relu(conv(256, 3, 1, 1, "conv3")(x))
    x = nn.relu(conv(256, 3, 1, 1, "conv4")(x))
    x = nn.relu(conv(256, 3, 1, 1, "conv5")(x))
    x = max_pool_ceil(x)
    self.sow("intermediates", "pool5", x)
    # Flattened in (H, W, C) order; the .npz stores fc6 as a 6×6×256×4096 HWIO filter, which matches.
    x = x.reshape(x.shape[0], -1)
    dense = lambda n, name: nn.Dense(n, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    x = RowDropout(self.dropout, self.axis_name, deterministic=not train)(nn.relu(dense(4096, "fc6")(x)))
    x = RowDropout(self.dropout, self.axis_name, deterministic=not train)(nn.relu(dense(4096, "fc7")(x)))
    if self.num_classes:
      x = dense(self.num_classes, "fc8")(x)
    return x


def npz_layout() -> list[layout.Layer]:
  """The .npz layout of `ssdh_jax.weights` (converted Caffe blobs) onto VGGF's modules."""
  npz = layout.NPZ
  return (
    [layout.Layer(f"conv{i}", (f"conv{i}",), npz) for i in range(1, 6)]
    + [layout.Layer("fc6", ("fc6",), (layout.fc_hwio(256), npz[1]))]
    + [layout.Layer("fc7", ("fc7",), npz), layout.Layer("fc8", ("fc8",), npz, classifier=True)]
  )


BACKBONES = {
  "vgg_f": BackboneSpec(fc_builder("vgg_f", VGGF), 224, 4096, preprocess="caffe_bgr", npz_layout=npz_layout),
}
