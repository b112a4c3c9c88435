"""How a checkpoint's tensors map onto a backbone's Flax leaves (the pretrained-weight layouts).

A backbone module describes its checkpoint as a list of `Layer`s: a source name stem (e.g. torchvision's
'features.0') and the Flax module path it fills, with one `Tensor` per leaf saying how to convert the layout
(conv OIHW -> HWIO, linear (out, in) -> (in, out), BatchNorm weight/bias/running statistics, ...).
`ssdh_jax.weights` reads files and applies these layouts; it knows no backbone by name.
"""

import dataclasses
import math
from collections.abc import Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class Tensor:
  """How one checkpoint tensor maps to one Flax leaf."""

  suffix: str  # appended to the layer's source name with the layout's separator
  collection: str  # 'params' | 'batch_stats'
  leaf: str  # 'kernel' | 'bias' | 'scale' | 'mean' | 'var'
  to_flax: Callable[[np.ndarray], np.ndarray]
  from_flax: Callable[[np.ndarray], np.ndarray]
  source_shape: Callable[[tuple[int, ...]], tuple[int, ...]]  # flax shape → checkpoint shape


def same(x):
  return x


def transpose(w: np.ndarray, block: int = 512) -> np.ndarray:
  """w.T as a C-contiguous copy, in cache-sized tiles (NumPy's plain copy of a transposed 10⁸-element matrix
  is several times slower)."""
  w = np.asarray(w)
  out = np.empty(w.shape[::-1], w.dtype)
  for i in range(0, w.shape[0], block):
    for j in range(0, w.shape[1], block):
      out[j : j + block, i : i + block] = w[i : i + block, j : j + block].T
  return out


def chw_linear(c: int) -> Tensor:
  """torch Linear after flatten of (C, H, W) → Dense after flatten of (H, W, C)."""

  def to_flax(w):  # (out, C·S) → (C, S, out) → (S, C, out): the second step moves whole rows of `out`
    n_out, s = w.shape[0], w.shape[1] // c
    return transpose(w).reshape(c, s, n_out).transpose(1, 0, 2).reshape(s * c, n_out)

  def from_flax(k):  # (S·C, out) → (C, S, out) → (out, C·S)
    s, n_out = k.shape[0] // c, k.shape[1]
    return transpose(np.asarray(k).reshape(s, c, n_out).transpose(1, 0, 2).reshape(c * s, n_out))

  return Tensor("weight", "params", "kernel", to_flax, from_flax, lambda s: (s[1], s[0]))


def fc_hwio(c: int) -> Tensor:
  """.npz fc6 stored as an (H, W, C, out) filter ↔ Dense kernel (H·W·C, out)."""

  def from_flax(k):
    s = math.isqrt(k.shape[0] // c)
    return k.reshape(s, s, c, k.shape[1])

  def source_shape(shape):
    s = math.isqrt(shape[0] // c)
    return (s, s, c, shape[1])

  return Tensor("w", "params", "kernel", lambda w: w.reshape(-1, w.shape[-1]), from_flax, source_shape)


BIAS = Tensor("bias", "params", "bias", same, same, same)
KINDS: dict[str, tuple[Tensor, ...]] = {
  "conv": (
    Tensor(
      "weight",
      "params",
      "kernel",
      lambda w: w.transpose(2, 3, 1, 0),
      lambda k: k.transpose(3, 2, 0, 1),
      lambda s: (s[3], s[2], s[0], s[1]),
    ),
    BIAS,
  ),
  "linear": (
    Tensor("weight", "params", "kernel", transpose, transpose, lambda s: (s[1], s[0])),
    BIAS,
  ),
  "bn": (
    Tensor("weight", "params", "scale", same, same, same),
    BIAS,
    Tensor("running_mean", "batch_stats", "mean", same, same, same),
    Tensor("running_var", "batch_stats", "var", same, same, same),
  ),
  "npz": (
    Tensor("w", "params", "kernel", same, same, same),
    Tensor("b", "params", "bias", same, same, same),
  ),
}


@dataclasses.dataclass(frozen=True)
class Layer:
  src: str  # checkpoint name stem, e.g. 'features.0' or 'conv1'
  dst: tuple[str, ...]  # Flax module path under the backbone root
  tensors: tuple[Tensor, ...]
  classifier: bool = False  # the ImageNet classifier: loaded only into a backbone that has one


CONV, LINEAR, BN, NPZ = KINDS["conv"], KINDS["linear"], KINDS["bn"], KINDS["npz"]
