"""Tests for ssdh_jax.models.pointwise: the 'dot' lowering of a 1×1 convolution equals the convolution ('conv',
what nn.Conv runs) in values and gradients, and MobileNetV2 has the same parameters and outputs with either."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_depthwise import _random_variables

from ssdh_jax.models import pointwise
from ssdh_jax.models.mobilenet_v2 import MobileNetV2

TOL = dict(rtol=1e-5, atol=1e-5)


@functools.partial(jax.jit, static_argnums=(3,))
def _value_and_vjp(x, w, g, impl):
  y, vjp = jax.vjp(lambda x, w: pointwise.pointwise_conv(x, w, impl), x, w)
  return (y, *vjp(g))


@pytest.mark.parametrize("hw,cin,cout", [((7, 7), 5, 8), ((8, 6), 16, 3), ((1, 1), 4, 4)])
def test_dot_matches_conv_values_and_gradients(hw, cin, cout):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((3, *hw, cin), np.float32))
  w = jnp.asarray(rng.standard_normal((1, 1, cin, cout), np.float32))
  g = jnp.asarray(rng.standard_normal((3, *hw, cout), np.float32))
  want = _value_and_vjp(x, w, g, "conv")
  got = _value_and_vjp(x, w, g, "dot")
  assert got[0].shape == want[0].shape == (3, *hw, cout)
  for a, b in zip(got, want):  # y, d/dx, d/dkernel
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, **TOL)


def test_dot_matches_nn_conv_and_keeps_dtype():
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 5, 5, 6), np.float32))
  ref = nn.Conv(4, (1, 1), use_bias=False)
  variables = ref.init(jax.random.key(0), x)
  want = jax.jit(ref.apply)(variables, x)
  for impl in ("conv", "dot"):
    mod = pointwise.PointwiseConv(4, impl=impl)
    shapes = jax.eval_shape(mod.init, jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, shapes) == jax.tree.map(jnp.shape, variables)
    np.testing.assert_allclose(jax.jit(mod.apply)(variables, x), want, **TOL)
    out = jax.jit(pointwise.PointwiseConv(4, impl=impl, dtype=jnp.bfloat16).apply)(variables, x)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(out.astype(jnp.float32), want, rtol=5e-2, atol=5e-2)


def test_resolve_impl_and_bad_kernel():
  assert pointwise.resolve_impl("auto") == ("dot" if jax.default_backend() == "cpu" else "conv")
  assert pointwise.resolve_impl("conv") == "conv" and pointwise.resolve_impl("dot") == "dot"
  with pytest.raises(ValueError, match=r"config\.model\.pointwise"):
    pointwise.resolve_impl("winograd")
  with pytest.raises(ValueError, match="pointwise kernel"):
    pointwise.pointwise_conv(jnp.zeros((1, 2, 2, 3)), jnp.zeros((3, 3, 3, 4)), "dot")


def test_mobilenet_v2_same_params_and_outputs_for_both_impls():
  x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 32, 32, 3), np.float32))
  conv, dot = MobileNetV2(pointwise="conv"), MobileNetV2(pointwise="dot")
  init_shapes = lambda m: jax.eval_shape(lambda x: m.init(jax.random.key(0), x), x)
  shapes = init_shapes(conv)
  assert jax.tree.structure(init_shapes(dot)) == jax.tree.structure(shapes)
  assert jax.tree.map(jnp.shape, init_shapes(dot)) == jax.tree.map(jnp.shape, shapes)
  assert shapes["params"]["features_2"]["expand"]["conv"]["kernel"].shape == (1, 1, 16, 96)
  assert shapes["params"]["features_2"]["project"]["kernel"].shape == (1, 1, 96, 24)
  assert shapes["params"]["features_18"]["conv"]["kernel"].shape == (1, 1, 320, 1280)
  variables = _random_variables(shapes)
  apply = lambda m: jax.jit(m.apply)(variables, x)
  want = apply(conv)
  assert want.shape == (2, 1280) and float(jnp.abs(want).max()) > 1e-2
  np.testing.assert_allclose(apply(dot), want, rtol=1e-4, atol=1e-4 * float(jnp.abs(want).max()))
