"""Depthwise (groups = channels) 2-D convolution with a choice of lowering.

XLA:CPU lowers a grouped convolution with feature_group_count = C (and its gradients) to a slow generic loop;
the same arithmetic written as k·k shifted multiply-adds over the padded input,

  y = Σ_ij pad(x)[:, i::s, j::s, :][:, :Ho, :Wo] · w[i, j],

fuses into a few elementwise loops and is several times faster forward + backward at MobileNetV2 shapes.
On GPU/TPU the cuDNN / native grouped convolution is the fast one, hence `resolve_impl('auto')`.

Both lowerings take the kernel in Flax's nn.Conv layout for groups = C, (kh, kw, 1, C), so parameters,
checkpoints and the torchvision weight loader are shared between them.

The same trick serves a dense convolution over few input channels (an RGB stem): XLA:CPU's convolution of a
3-channel image is several times slower than oneDNN's (bench/results/conv_grads_cpu.md: MobileNetV2's stem
forward at 0.45× PyTorch), while k·k·C_in broadcast multiply-adds, each a (B, Ho, Wo, 1) tap times a
(C_out,) kernel row, fuse into one elementwise loop over the output channels (`shifted_conv`, `StemConv`).
"""

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from ssdh_jax.models import layers

Array = jax.Array

IMPLS = ("conv", "shift")


def resolve_impl(impl: str) -> str:
  """'auto' → 'shift' on the CPU backend, 'conv' elsewhere; 'conv' and 'shift' pass through."""
  return layers.resolve_lowering("depthwise", impl, IMPLS, "shift")


def depthwise_conv(x: Array, kernel: Array, stride: int = 1, padding: int = 0, impl: str = "conv") -> Array:
  """Depthwise convolution, no bias.

  Args:
    x: (B, H, W, C) input; its dtype is the compute dtype.
    kernel: (kh, kw, 1, C), nn.Conv's layout for feature_group_count = C; cast to x.dtype.
    stride: the same stride along H and W.
    padding: p, zero padding ((p, p), (p, p)) as in torch.
    impl: 'conv' (lax.conv_general_dilated with feature_group_count = C, what nn.Conv runs) or 'shift'
      (k·k shifted multiply-adds); 'auto' resolves by backend.

  Returns:
    (B, Ho, Wo, C) in x.dtype, Ho = (H + 2p − kh) // stride + 1 (likewise Wo).
  """
  impl = resolve_impl(impl)
  kh, kw, one, c = kernel.shape
  if one != 1 or c != x.shape[-1]:
    raise ValueError(f"depthwise kernel must be (kh, kw, 1, {x.shape[-1]}); got {kernel.shape}")
  kernel = kernel.astype(x.dtype)
  if impl == "conv":
    return lax.conv_general_dilated(
      x,
      kernel,
      window_strides=(stride, stride),
      padding=((padding, padding), (padding, padding)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=c,
    )
  _, h, w, _ = x.shape
  ho, wo = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  # Half-precision inputs accumulate the k·k terms in float32 (as a convolution would); the casts fuse into
  # the same elementwise loop, so this costs no extra memory traffic.
  acc_dtype = jnp.promote_types(x.dtype, jnp.float32)
  w_acc = kernel[:, :, 0, :].astype(acc_dtype)
  out = None
  for i in range(kh):
    for j in range(kw):
      term = _tap(xp, i, j, stride, ho, wo).astype(acc_dtype) * w_acc[i, j]
      out = term if out is None else out + term
  return out.astype(x.dtype)


def _tap(xp: Array, i: int, j: int, stride: int, ho: int, wo: int) -> Array:
  """Rows i, i + s, …, i + s·(Ho − 1) and columns j, … of the padded input: the taps that meet w[i, j]."""
  b, c = xp.shape[0], xp.shape[-1]
  return lax.slice(
    xp, (0, i, j, 0), (b, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, c), (1, stride, stride, 1)
  )


def _dense_conv(x: Array, kernel: Array, stride: int, padding: int) -> Array:
  """What nn.Conv runs: lax's convolution, the kernel cast to x.dtype."""
  return lax.conv_general_dilated(
    x,
    kernel.astype(x.dtype),
    window_strides=(stride, stride),
    padding=((padding, padding), (padding, padding)),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def shifted_conv(x: Array, kernel: Array, stride: int = 1, padding: int = 0) -> Array:
  """Dense convolution (groups = 1), no bias, as k·k·C_in shifted broadcast multiply-adds.

  For few input channels only (the cost is k·k·C_in elementwise passes' worth of arithmetic, all in one
  fused loop): y = Σ_ij Σ_c pad(x)[:, i::s, j::s, c:c+1] · w[i, j, c, :], summed in that order. Only the
  forward is shifted: the gradients are the convolution's (`_shifted_conv_bwd`); the weight gradient written
  as k·k·C_in reductions made the train step slower (bench_inference.py --stem-train).

  Args:
    x: (B, H, W, C_in); its dtype is the compute dtype (half precision accumulates in float32).
    kernel: (kh, kw, C_in, C_out), nn.Conv's layout; cast to x.dtype.
    stride, padding: as in `depthwise_conv`.

  Returns:
    (B, Ho, Wo, C_out) in x.dtype.
  """
  kh, kw, cin, _ = kernel.shape
  if cin != x.shape[-1]:
    raise ValueError(f"kernel {kernel.shape} expects {cin} input channels; got {x.shape[-1]}")
  _, h, w, _ = x.shape
  ho, wo = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  acc_dtype = jnp.promote_types(x.dtype, jnp.float32)
  w_acc = kernel.astype(x.dtype).astype(acc_dtype)
  out = None
  for i in range(kh):
    for j in range(kw):
      tap = _tap(xp, i, j, stride, ho, wo).astype(acc_dtype)
      for c in range(cin):
        term = tap[..., c : c + 1] * w_acc[i, j, c]
        out = term if out is None else out + term
  return out.astype(x.dtype)


def _shifted_conv_fwd(x: Array, kernel: Array, stride: int, padding: int):
  return shifted_conv(x, kernel, stride, padding), (x, kernel)


def _shifted_conv_bwd(stride: int, padding: int, res, g: Array):
  x, kernel = res
  _, vjp = jax.vjp(lambda x, k: _dense_conv(x, k, stride, padding), x, kernel)
  return vjp(g)


shifted_conv.defvjp(_shifted_conv_fwd, _shifted_conv_bwd)


# A dense convolution runs as shifted multiply-adds (under 'shift') when it has at most this many input
# channels: an RGB stem. Beyond a few, the k·k·C_in-term loop loses to the convolution's matmul.
STEM_MAX_CHANNELS = 4


class StemConv(nn.Module):
  """Drop-in for nn.Conv(features, (k, k), strides=s, padding=((p, p), (p, p)), use_bias=...) on an input with
  few channels: the same parameters 'kernel' (k, k, C_in, features) and, with use_bias, 'bias' (features,),
  initialised in the same order (so the same key draws the same values), with a selectable lowering.

  Attributes:
    features, kernel, stride, padding: as nn.Conv's (symmetric padding p).
    impl: 'auto', 'conv' (lax.conv_general_dilated, what nn.Conv runs) or 'shift' (`shifted_conv`); 'shift'
      applies only when C_in ≤ STEM_MAX_CHANNELS, otherwise the convolution runs.
    use_bias, dtype, param_dtype, kernel_init, bias_init: as nn.Conv's.
  """

  features: int
  kernel: int = 3
  stride: int = 1
  padding: int = 0
  impl: str = "auto"
  use_bias: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Callable[..., Array] = nn.initializers.lecun_normal()
  bias_init: Callable[..., Array] = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: (B, H, W, C_in) → (B, Ho, Wo, features) in self.dtype."""
    k, cin = self.kernel, x.shape[-1]
    kernel = self.param("kernel", self.kernel_init, (k, k, cin, self.features), self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
    x = x.astype(self.dtype)
    p = self.padding
    if resolve_impl(self.impl) == "shift" and cin <= STEM_MAX_CHANNELS:
      y = shifted_conv(x, kernel, self.stride, p)
    else:
      y = _dense_conv(x, kernel, self.stride, p)
    return y if bias is None else y + bias.astype(self.dtype)


class DepthwiseConv(nn.Module):
  """Drop-in for nn.Conv(features, (k, k), strides=s, padding=(k−1)//2 symmetric, feature_group_count=features,
  use_bias=False): same parameter 'kernel' of shape (k, k, 1, features), selectable lowering.

  Attributes:
    features: channels C (input and output).
    kernel: spatial size k (odd: padding (k − 1) // 2 each side keeps 'same' size at stride 1).
    stride: stride along H and W.
    impl: 'auto', 'conv' or 'shift' (see resolve_impl).
    dtype: compute dtype (input and kernel are cast to it, as nn.Conv does); param_dtype: kernel's dtype.
    kernel_init: initialiser of the (k, k, 1, C) kernel.
  """

  features: int
  kernel: int = 3
  stride: int = 1
  impl: str = "auto"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Callable[..., Array] = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: (B, H, W, features) → (B, Ho, Wo, features) in self.dtype."""
    if x.shape[-1] != self.features:
      raise ValueError(f"DepthwiseConv expects {self.features} input channels; got {x.shape[-1]}")
    k = self.kernel
    kernel = self.param("kernel", self.kernel_init, (k, k, 1, self.features), self.param_dtype)
    return depthwise_conv(x.astype(self.dtype), kernel, self.stride, (k - 1) // 2, self.impl)
