"""Tests for ssdh_jax.models.depthwise: the 'shift' lowering equals the grouped convolution ('conv', what
nn.Conv runs) in values and gradients, and MobileNetV2 has the same parameters and outputs with either."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssdh_jax.models import depthwise
from ssdh_jax.models.mobilenet_v2 import MobileNetV2

TOL = dict(rtol=1e-5, atol=1e-5)


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def _value_and_vjp(x, w, g, stride, pad, impl):
  """y = depthwise_conv(x, w) and the cotangent g pulled back to (dy/dx·g, dy/dw·g), in one compile."""
  y, vjp = jax.vjp(lambda x, w: depthwise.depthwise_conv(x, w, stride, pad, impl), x, w)
  return (y, *vjp(g))


@pytest.mark.parametrize(
  "hw,k,stride",
  [
    *[(hw, 3, stride) for hw in ((7, 7), (8, 8), (9, 10)) for stride in (1, 2)],
    ((9, 10), 5, 2),
  ],
)
def test_shift_matches_conv_values_and_gradients(hw, k, stride):
  rng = np.random.default_rng(0)
  c, pad = 5, (k - 1) // 2
  ho, wo = (hw[0] + 2 * pad - k) // stride + 1, (hw[1] + 2 * pad - k) // stride + 1
  x = jnp.asarray(rng.standard_normal((2, *hw, c), np.float32))
  w = jnp.asarray(rng.standard_normal((k, k, 1, c), np.float32))
  g = jnp.asarray(rng.standard_normal((2, ho, wo, c), np.float32))
  want = _value_and_vjp(x, w, g, stride, pad, "conv")
  got = _value_and_vjp(x, w, g, stride, pad, "shift")
  assert got[0].shape == want[0].shape == (2, ho, wo, c)
  for a, b in zip(got, want):  # y, d/dx, d/dkernel
    np.testing.assert_allclose(a, b, **TOL)


def test_shift_matches_nn_conv_and_keeps_dtype():
  """DepthwiseConv (either lowering) == nn.Conv(feature_group_count=C) from the same params; bf16 in → out."""
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 9, 9, 6), np.float32))
  ref = nn.Conv(6, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), feature_group_count=6, use_bias=False)
  variables = ref.init(jax.random.key(0), x)
  want = jax.jit(ref.apply)(variables, x)
  for impl in ("conv", "shift"):
    mod = depthwise.DepthwiseConv(6, 3, 2, impl=impl, kernel_init=nn.initializers.lecun_normal())
    shapes = jax.eval_shape(mod.init, jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, shapes) == jax.tree.map(jnp.shape, variables)
    np.testing.assert_allclose(jax.jit(mod.apply)(variables, x), want, **TOL)
    out = jax.jit(depthwise.DepthwiseConv(6, 3, 2, impl=impl, dtype=jnp.bfloat16).apply)(variables, x)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(out.astype(jnp.float32), want, rtol=5e-2, atol=5e-2)


def test_resolve_impl():
  assert depthwise.resolve_impl("auto") == ("shift" if jax.default_backend() == "cpu" else "conv")
  assert depthwise.resolve_impl("conv") == "conv"
  assert depthwise.resolve_impl("shift") == "shift"
  with pytest.raises(ValueError, match=r"config\.model\.depthwise"):
    depthwise.resolve_impl("fast")


def _random_variables(shapes, seed=0):
  """O(1) random values for an eval_shape'd variables tree (no XLA compile of the initialisers): positive
  BatchNorm statistics/scales, fan-in-scaled kernels, so activations stay O(1) through all 19 layers."""
  rng = np.random.default_rng(seed)

  def leaf(s):
    if len(s.shape) == 1:
      return jnp.asarray(0.5 + rng.random(s.shape, dtype=np.float32))
    fan_in = int(np.prod(s.shape[:-1]))
    return jnp.asarray(rng.standard_normal(s.shape, dtype=np.float32) * np.sqrt(2.0 / fan_in))

  return jax.tree.map(leaf, shapes)


def test_mobilenet_v2_same_params_and_outputs_for_both_impls():
  x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 32, 32, 3), np.float32))
  conv, shift = MobileNetV2(depthwise="conv"), MobileNetV2(depthwise="shift")
  init_shapes = lambda m: jax.eval_shape(lambda x: m.init(jax.random.key(0), x), x)
  shapes = init_shapes(conv)
  # Same names and shapes: checkpoints and the torchvision weight loader carry over unchanged.
  assert jax.tree.structure(init_shapes(shift)) == jax.tree.structure(shapes)
  assert jax.tree.map(jnp.shape, init_shapes(shift)) == jax.tree.map(jnp.shape, shapes)
  assert shapes["params"]["features_2"]["depthwise"]["conv"]["kernel"].shape == (3, 3, 1, 96)

  # Inference mode (running statistics): a well-conditioned function of the input. Train mode at this size
  # is not: BatchNorm over 2 samples × 1×1 pixels maps each channel to ±1, turning 1e-6 differences in
  # summation order into sign flips, so it is left to the per-op gradient tests above.
  variables = _random_variables(shapes)
  apply = lambda m: jax.jit(m.apply)(variables, x)
  want = apply(conv)
  assert want.shape == (2, 1280) and float(jnp.abs(want).max()) > 1e-2
  np.testing.assert_allclose(apply(shift), want, rtol=1e-4, atol=1e-4 * float(jnp.abs(want).max()))


def test_mobilenet_v2_bad_depthwise_name_raises():
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  with pytest.raises(ValueError, match=r"config\.model\.depthwise"):
    jax.eval_shape(lambda x: MobileNetV2(depthwise="winograd").init(jax.random.key(0), x), x)


# ------------------------------------------------------------------------------------------------ RGB stem


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def _dense_value_and_vjp(x, w, g, stride, pad, impl):
  """y = the dense convolution of x by w ('conv': lax's, 'shift': shifted_conv) and (dy/dx·g, dy/dw·g)."""

  def f(x, w):
    if impl == "shift":
      return depthwise.shifted_conv(x, w, stride, pad)
    dn = ("NHWC", "HWIO", "NHWC")
    return jax.lax.conv_general_dilated(
      x, w, (stride, stride), ((pad, pad), (pad, pad)), dimension_numbers=dn
    )

  y, vjp = jax.vjp(f, x, w)
  return (y, *vjp(g))


@pytest.mark.parametrize(
  "hw,k,stride,cin",
  [((9, 9), 3, 2, 3), ((8, 10), 3, 2, 3), ((7, 7), 3, 1, 3), ((11, 11), 5, 2, 1), ((12, 13), 3, 3, 4)],
)
def test_shifted_conv_matches_conv_values_and_gradients(hw, k, stride, cin):
  rng = np.random.default_rng(3)
  cout, pad = 6, (k - 1) // 2
  ho, wo = (hw[0] + 2 * pad - k) // stride + 1, (hw[1] + 2 * pad - k) // stride + 1
  x = jnp.asarray(rng.standard_normal((2, *hw, cin), np.float32))
  w = jnp.asarray(rng.standard_normal((k, k, cin, cout), np.float32))
  g = jnp.asarray(rng.standard_normal((2, ho, wo, cout), np.float32))
  want = _dense_value_and_vjp(x, w, g, stride, pad, "conv")
  got = _dense_value_and_vjp(x, w, g, stride, pad, "shift")
  assert got[0].shape == want[0].shape == (2, ho, wo, cout)
  for a, b in zip(got, want):  # y, d/dx, d/dkernel
    np.testing.assert_allclose(a, b, **TOL)


@pytest.mark.parametrize("use_bias", [False, True])
def test_stem_conv_is_nn_conv_with_the_same_params(use_bias):
  """StemConv draws the same parameters as nn.Conv from the same key (checkpoints, the weight loader and a
  run's init are unchanged) and computes the same function under either lowering; bf16 in → bf16 out."""
  x = jnp.asarray(np.random.default_rng(4).standard_normal((2, 15, 15, 3), np.float32))
  ref = nn.Conv(8, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), use_bias=use_bias)
  variables = ref.init(jax.random.key(0), x)
  want = jax.jit(ref.apply)(variables, x)
  for impl in ("conv", "shift"):
    mod = depthwise.StemConv(8, 3, 2, 1, impl=impl, use_bias=use_bias)
    got_vars = mod.init(jax.random.key(0), x)
    assert jax.tree.structure(got_vars) == jax.tree.structure(variables)
    jax.tree.map(np.testing.assert_array_equal, got_vars, variables)
    np.testing.assert_allclose(jax.jit(mod.apply)(variables, x), want, **TOL)
    out = jax.jit(depthwise.StemConv(8, 3, 2, 1, impl=impl, use_bias=use_bias, dtype=jnp.bfloat16).apply)(
      variables, x
    )
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(out.astype(jnp.float32), want, rtol=5e-2, atol=5e-2)


def test_stem_conv_runs_the_convolution_beyond_a_few_input_channels():
  """Past STEM_MAX_CHANNELS the shifted form would lose; 'shift' then runs the convolution, bit for bit."""
  c = depthwise.STEM_MAX_CHANNELS + 1
  x = jnp.asarray(np.random.default_rng(5).standard_normal((1, 9, 9, c), np.float32))
  variables = nn.Conv(4, (3, 3), padding=((1, 1), (1, 1)), use_bias=False).init(jax.random.key(1), x)
  conv = jax.jit(depthwise.StemConv(4, 3, 1, 1, impl="conv").apply)(variables, x)
  shift = jax.jit(depthwise.StemConv(4, 3, 1, 1, impl="shift").apply)(variables, x)
  np.testing.assert_array_equal(shift, conv)


def test_mobilenet_v2_stem_lowering_follows_depthwise_and_keeps_its_init():
  """features_0's conv is shifted multiply-adds under depthwise='shift', a convolution under 'conv'; both
  initialise the same values (the init of a run does not depend on the lowering)."""
  x = jnp.asarray(np.random.default_rng(6).standard_normal((1, 16, 16, 3), np.float32))
  conv, shift = MobileNetV2(depthwise="conv", output_layer=1), MobileNetV2(depthwise="shift", output_layer=1)
  v_conv = jax.jit(conv.init)(jax.random.key(0), x)
  v_shift = jax.jit(shift.init)(jax.random.key(0), x)
  jax.tree.map(np.testing.assert_array_equal, v_shift, v_conv)
  assert v_conv["params"]["features_0"]["conv"]["kernel"].shape == (3, 3, 3, 32)
  np.testing.assert_allclose(jax.jit(shift.apply)(v_conv, x), jax.jit(conv.apply)(v_conv, x), **TOL)
  hlo = {m: jax.jit(m.apply).lower(v_conv, x).as_text() for m in (conv, shift)}
  assert "convolution" in hlo[conv] and "convolution" not in hlo[shift]
