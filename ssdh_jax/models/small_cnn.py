"""A small BatchNorm CNN trained from scratch, for 8×8 (scikit-learn digits) and 32×32 (CIFAR) inputs.

  stage 1: 2 × [conv 3×3 (w) → BN → ReLU] → max-pool 2/2
  stage 2: 2 × [conv 3×3 (2w) → BN → ReLU] → max-pool 2/2
  stage 3: 2 × [conv 3×3 (4w) → BN → ReLU] → global average pool
  fc: 4w → fc_dim (default 8w) → ReLU → dropout     [→ logits num_classes]
Spatial sizes: 32 → 16 → 8 → 1 and 8 → 4 → 2 → 1; any input of at least 4×4 works.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssdh_jax.models.layers import RowDropout
from ssdh_jax.models.spec import BackboneSpec, no_slices

Array = jax.Array


class SmallCNN(nn.Module):
  """Attributes:
  width: w, the channel count of the first stage.
  fc_dim: width of the fc feature layer (0: 8w).
  num_classes: 0 → features (B, fc_dim); > 0 → logits (B, num_classes) from a layer named 'logits'.
  dropout: rate after the fc layer; masks drawn per global row (`RowDropout`).
  axis_name: device axis over which BatchNorm averages batch statistics (None: per device) and along which
    the dropout rows are numbered.
  dtype: compute dtype; param_dtype: parameter dtype.
  """

  width: int = 32
  fc_dim: int = 0
  num_classes: int = 0
  dropout: float = 0.5
  axis_name: str | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    """x: (B, H, W, C) preprocessed images. Returns (B, fc_dim) features or (B, num_classes) logits."""
    x = x.astype(self.dtype)
    for stage, mult in enumerate((1, 2, 4), start=1):
      for i in (1, 2):
        x = nn.Conv(
          self.width * mult,
          (3, 3),
          padding=((1, 1), (1, 1)),
          use_bias=False,
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          name=f"conv{stage}_{i}",
        )(x)
        x = nn.BatchNorm(
          use_running_average=not train,
          momentum=0.9,
          epsilon=1e-5,
          axis_name=self.axis_name,
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          name=f"bn{stage}_{i}",
        )(x)
        x = nn.relu(x)
      if stage < 3:
        x = nn.max_pool(x, (2, 2), (2, 2))
    x = x.mean(axis=(1, 2))
    fc_dim = self.fc_dim or 8 * self.width
    x = nn.relu(nn.Dense(fc_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="fc")(x))
    x = RowDropout(self.dropout, self.axis_name, deterministic=not train)(x)
    if self.num_classes:
      x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="logits")(x)
    return x


def build(*, width, dropout, axis_name, layers, num_classes, dtype, param_dtype, **_) -> SmallCNN:
  no_slices("small_cnn", layers)
  return SmallCNN(
    width=width,
    dropout=dropout,
    axis_name=axis_name,
    num_classes=num_classes,
    dtype=dtype,
    param_dtype=param_dtype,
  )


BACKBONES = {"small_cnn": BackboneSpec(build, 32, None, batch_norm=True)}
