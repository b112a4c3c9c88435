"""The SSDH hashing model: backbone → fc7-like features → hash layer (k, sigmoid) + optional class head (C).

Parameter tree (top level), the rule the optimiser uses to tell backbone from heads:
  params['backbone']    everything pretrained or from-scratch in the backbone (also batch_stats['backbone'])
  params['hash']        Dense F → k   {'kernel': (F, k), 'bias': (k,)}
  params['classifier']  Dense F → C   {'kernel': (F, C), 'bias': (C,)}  (absent when num_classes == 0)
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


class HashingModel(nn.Module):
  """Attributes:
  backbone: a Linen module `backbone(images, train=bool) -> (B, F)` features in its compute dtype.
  bits: k, the code length.
  num_classes: C, the class-head width (0: no class head).
  param_dtype: dtype of the head parameters.
  freeze_backbone: run the backbone in inference mode (no dropout, BatchNorm running statistics) even when
    training; set when model.trainable='heads'.
  """

  backbone: nn.Module
  bits: int = 48
  num_classes: int = 0
  param_dtype: Any = jnp.float32
  freeze_backbone: bool = False

  @nn.compact
  def __call__(self, images: Array, train: bool = False) -> dict[str, Array]:
    """Args:
      images: (B, H, W, 3) float, already preprocessed.
      train: enables dropout (rng 'dropout') and BatchNorm batch statistics (mutable 'batch_stats').

    Returns:
      dict with 'codes' (B, k) float32 in (0, 1), 'hash_logits' (B, k) float32, 'class_logits' (B, C) float32
      (only if num_classes > 0) and 'features' (B, F) in the backbone's compute dtype.
    """
    features = self.backbone(images, train=train and not self.freeze_backbone)
    f32 = features.astype(jnp.float32)  # heads run in float32 whatever the compute dtype
    hash_logits = nn.Dense(self.bits, dtype=jnp.float32, param_dtype=self.param_dtype, name="hash")(f32)
    out = {"codes": jax.nn.sigmoid(hash_logits), "hash_logits": hash_logits, "features": features}
    if self.num_classes:
      out["class_logits"] = nn.Dense(
        self.num_classes, dtype=jnp.float32, param_dtype=self.param_dtype, name="classifier"
      )(f32)
    return out


class Passthrough(nn.Module):
  """A backbone stand-in whose input already is the feature vector (B, F): a cached frozen backbone."""

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    del train
    return x
