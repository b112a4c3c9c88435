"""Pointwise (1×1, stride 1, ungrouped) convolution with a choice of lowering.

A 1×1 convolution is a matmul over the channels. XLA:CPU lowers its weight gradient as a convolution whose
window is the whole image, after transposing both operands, and runs that several times slower than the
matmul x^T·g over the B·H·W rows (bench/results/conv_grads_cpu.md: MobileNetV2's expand 1×1 weight gradient 14×
faster as a matmul; the whole network's forward + backward 1.36×). Written as a dot, all three products
(forward, input and weight gradient) are matmuls. On GPU/TPU the convolution is as fast, hence `auto`.

Both lowerings take nn.Conv's kernel, (1, 1, C_in, C_out), so parameters, checkpoints and the torchvision weight
loader are shared between them.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from ssdh_jax.models import layers

Array = jax.Array

IMPLS = ("conv", "dot")


def resolve_impl(impl: str) -> str:
  """'auto' → 'dot' on the CPU backend, 'conv' elsewhere; 'conv' and 'dot' pass through."""
  return layers.resolve_lowering("pointwise", impl, IMPLS, "dot")


def pointwise_conv(x: Array, kernel: Array, impl: str = "conv") -> Array:
  """1×1 convolution, stride 1, no bias.

  Args:
    x: (B, H, W, C_in); its dtype is the compute dtype.
    kernel: (1, 1, C_in, C_out), nn.Conv's layout; cast to x.dtype.
    impl: 'conv' (lax.conv_general_dilated, what nn.Conv runs), 'dot' (a matmul over the channels) or 'auto'.

  Returns:
    (B, H, W, C_out) in x.dtype.
  """
  impl = resolve_impl(impl)
  if kernel.shape[:2] != (1, 1) or kernel.shape[2] != x.shape[-1]:
    raise ValueError(f"pointwise kernel must be (1, 1, {x.shape[-1]}, C_out); got {kernel.shape}")
  kernel = kernel.astype(x.dtype)
  if impl == "conv":
    return lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return lax.dot_general(x, kernel[0, 0], (((3,), (0,)), ((), ())))


class PointwiseConv(nn.Module):
  """Drop-in for nn.Conv(features, (1, 1), use_bias=False): same parameter 'kernel' (1, 1, C_in, features),
  selectable lowering.

  Attributes:
    features: output channels.
    impl: 'auto', 'conv' or 'dot' (see resolve_impl).
    dtype: compute dtype (input and kernel are cast to it, as nn.Conv does); param_dtype: kernel's dtype.
    kernel_init: initialiser of the kernel.
  """

  features: int
  impl: str = "auto"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Callable[..., Array] = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: (B, H, W, C_in) → (B, H, W, features) in self.dtype."""
    kernel = self.param("kernel", self.kernel_init, (1, 1, x.shape[-1], self.features), self.param_dtype)
    return pointwise_conv(x.astype(self.dtype), kernel, self.impl)
