"""Tests for ssdh_jax.models: shapes of every backbone, Caffe arithmetic of VGG-F, layer oracles, heads,
dropout/BatchNorm handling, mixed precision and cross-device BatchNorm statistics.

Large backbones are checked with jax.eval_shape (no weights allocated); real forwards use small_cnn.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default as default_config
from ssdh_jax import models
from ssdh_jax.models import alexnet, vgg_f


def _shape_vars(module, size, batch=2):
  x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
  return jax.eval_shape(lambda x: module.init({"params": jax.random.key(0)}, x), x)


def _train_apply_shapes(module, variables, size, batch=2):
  x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
  fn = lambda v, x: module.apply(
    v, x, train=True, rngs={"dropout": jax.random.key(1)}, mutable=["batch_stats"]
  )
  return jax.eval_shape(fn, variables, x)


# ------------------------------------------------------------------------------------------ shapes


@pytest.mark.parametrize("name", models.BACKBONES)
def test_hashing_model_outputs_every_backbone(name):
  size = models.DEFAULT_IMAGE_SIZE[name]
  model = models.build_model({"name": name, "bits": 48, "num_classes": 21})
  variables = _shape_vars(model, size)
  assert set(variables["params"]) == {"backbone", "hash", "classifier"}
  assert ("batch_stats" in variables) == (name in models.HAS_BATCH_NORM)
  out, _ = _train_apply_shapes(model, variables, size)
  f = models.FEATURE_DIM.get(name, 8 * 32)
  assert {k: (v.shape, v.dtype) for k, v in out.items()} == {
    "codes": ((2, 48), jnp.float32),
    "hash_logits": ((2, 48), jnp.float32),
    "class_logits": ((2, 21), jnp.float32),
    "features": ((2, f), jnp.float32),
  }
  assert variables["params"]["hash"]["kernel"].shape == (f, 48)
  assert variables["params"]["classifier"]["kernel"].shape == (f, 21)


@pytest.mark.parametrize("name", models.BACKBONES)
def test_backbone_with_imagenet_classifier(name):
  size = models.DEFAULT_IMAGE_SIZE[name]
  backbone = models.build_backbone(name, num_classes=1000)
  variables = _shape_vars(backbone, size, batch=3)
  out, _ = _train_apply_shapes(backbone, variables, size, batch=3)
  assert out.shape == (3, 1000)


def test_no_class_head():
  model = models.build_model({"name": "small_cnn", "bits": 12, "num_classes": 0})
  variables = _shape_vars(model, 8)
  assert set(variables["params"]) == {"backbone", "hash"}
  out, _ = _train_apply_shapes(model, variables, 8)
  assert set(out) == {"codes", "hash_logits", "features"}


def test_vgg_f_caffe_spatial_sizes():
  backbone = models.build_backbone("vgg_f")
  variables = _shape_vars(backbone, 224, batch=1)
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  _, state = jax.eval_shape(
    lambda v, x: backbone.apply(v, x, capture_intermediates=True, mutable=["intermediates"]), variables, x
  )
  inter = jax.tree.map(lambda a: a.shape, state["intermediates"])
  assert inter["conv1"]["__call__"][0] == (1, 54, 54, 64)  # (224 − 11) / 4 + 1, floored by the conv
  assert inter["pool1"][0] == (1, 27, 27, 64)  # ceil((54 − 3) / 2) + 1
  assert inter["conv2"]["__call__"][0] == (1, 27, 27, 256)
  assert inter["pool2"][0] == (1, 13, 13, 256)
  assert inter["conv5"]["__call__"][0] == (1, 13, 13, 256)
  assert inter["pool5"][0] == (1, 6, 6, 256)
  assert variables["params"]["fc6"]["kernel"].shape == (256 * 6 * 6, 4096)
  assert variables["params"]["conv1"]["kernel"].shape == (11, 11, 3, 64)


def test_param_counts_match_the_reference_architectures():
  # torchvision's documented counts; VGG-F's from its layer list (conv 11²·3·64 + 5²·64·256 + 3 · 3²·256² …).
  vgg_f_count = (
    (11 * 11 * 3 + 1) * 64
    + (25 * 64 + 1) * 256
    + 3 * (9 * 256 + 1) * 256
    + (9216 + 1) * 4096
    + (4096 + 1) * 4096
    + (4096 + 1) * 1000
  )
  want = {"alexnet": 61_100_840, "vgg16": 138_357_544, "vgg19": 143_667_240, "mobilenet_v2": 3_504_872}
  want["vgg_f"] = vgg_f_count
  for name, count in want.items():
    params = _shape_vars(models.build_backbone(name, num_classes=1000), 224)["params"]
    assert sum(math.prod(p.shape) for p in jax.tree.leaves(params)) == count, name


# ------------------------------------------------------------------------------------------ layer oracles


def _caffe_pool_loops(x, k=3, s=2):
  """Caffe's MaxPool forward, pad 0: pooled = ceil((H − k) / s) + 1, window [i·s, min(i·s + k, H))."""
  b, h, w, c = x.shape
  oh, ow = math.ceil((h - k) / s) + 1, math.ceil((w - k) / s) + 1
  out = np.empty((b, oh, ow, c), x.dtype)
  for i in range(oh):
    for j in range(ow):
      out[:, i, j] = x[:, i * s : min(i * s + k, h), j * s : min(j * s + k, w)].max((1, 2))
  return out


@pytest.mark.parametrize("h,w", [(54, 54), (27, 27), (13, 13), (8, 7), (4, 5)])
def test_max_pool_ceil_matches_caffe(h, w):
  # All-negative inputs: a pool that padded with 0 instead of −inf would be caught at the overhanging edge.
  x = -np.abs(np.random.default_rng(h * w).standard_normal((2, h, w, 3)).astype(np.float32)) - 1.0
  got = np.asarray(vgg_f.max_pool_ceil(jnp.asarray(x)))
  np.testing.assert_array_equal(got, _caffe_pool_loops(x))


def test_ceil_pool_size_arithmetic():
  assert [vgg_f.ceil_pool_size(n, 3, 2) for n in (54, 27, 13)] == [27, 13, 6]
  assert vgg_f.ceil_pool_size(55, 3, 2) == 27  # exact fit: no overhang
  assert vgg_f.ceil_pool_size(3, 1, 2, pad=1) == 2  # Caffe drops a window starting inside the padding


def test_lrn_matches_caffe_formula():
  rng = np.random.default_rng(0)
  x = (rng.standard_normal((2, 3, 4, 7)) * 60).astype(np.float32)  # large, so the Σa² term matters
  want = np.empty_like(x, dtype=np.float64)
  for c in range(7):
    window = x[..., max(0, c - 2) : min(7, c + 3)].astype(np.float64)
    want[..., c] = x[..., c] / (2.0 + (5e-4 / 5) * (window**2).sum(-1)) ** 0.75
  got = np.asarray(vgg_f.lrn_caffe(jnp.asarray(x)))
  np.testing.assert_allclose(got, want, rtol=2e-6)
  assert np.abs(got / x - 2.0**-0.75).max() > 0.05  # the denominator is not just the constant k


@pytest.mark.parametrize("h,o", [(13, 6), (2, 7), (14, 7), (6, 6), (5, 3)])
def test_adaptive_avg_pool_matches_torch(h, o):
  x = np.random.default_rng(h).standard_normal((2, h, h + 1, 3)).astype(np.float32)
  w = h + 1
  want = np.empty((2, o, o, 3), np.float32)
  for i in range(o):
    for j in range(o):
      r0, r1 = math.floor(i * h / o), math.ceil((i + 1) * h / o)
      c0, c1 = math.floor(j * w / o), math.ceil((j + 1) * w / o)
      want[:, i, j] = x[:, r0:r1, c0:c1].mean((1, 2))
  np.testing.assert_allclose(
    np.asarray(alexnet.adaptive_avg_pool(jnp.asarray(x), o)), want, rtol=1e-6, atol=1e-6
  )


def test_vgg_torch_conv_indices():
  # torchvision's make_layers: conv (i), ReLU (i + 1) …, MaxPool after each stage.
  assert models.vgg.torch_conv_indices(16) == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
  assert models.vgg.torch_conv_indices(19)[-4:] == [28, 30, 32, 34]


# ------------------------------------------------------------------------------------------ real forwards


@pytest.fixture(scope="module")
def small():
  model = models.build_model({"name": "small_cnn", "bits": 16, "num_classes": 10, "width": 8})
  variables = models.init_variables(model, jax.random.key(0), 8, batch=4)
  return model, variables


def _train(model, variables, x, key):
  return model.apply(variables, x, train=True, rngs={"dropout": key}, mutable=["batch_stats"])


def test_small_cnn_train_and_eval(small):
  model, variables = small
  assert set(variables) == {"params", "batch_stats"}
  x = jax.random.uniform(jax.random.key(1), (6, 8, 8, 3)) - 0.5
  train = jax.jit(lambda v, x, k: _train(model, v, x, k))
  out1, upd1 = train(variables, x, jax.random.key(2))
  out2, _ = train(variables, x, jax.random.key(3))
  np.testing.assert_allclose(out1["codes"], jax.nn.sigmoid(out1["hash_logits"]), rtol=1e-6)
  assert np.all((np.asarray(out1["codes"]) > 0) & (np.asarray(out1["codes"]) < 1))
  assert not np.allclose(out1["features"], out2["features"])  # dropout keys differ
  # BatchNorm: running stats move towards the batch statistics (momentum 0.9).
  before = variables["batch_stats"]["backbone"]["bn1_1"]["mean"]
  after = upd1["batch_stats"]["backbone"]["bn1_1"]["mean"]
  assert not np.allclose(before, after)
  evaluate = jax.jit(lambda v, x: model.apply(v, x, train=False))
  e1, e2 = evaluate(variables, x), evaluate(variables, x)
  np.testing.assert_array_equal(e1["features"], e2["features"])
  # Eval uses running statistics, so one image's output does not depend on the rest of the batch.
  np.testing.assert_allclose(evaluate(variables, x[:1])["codes"], e1["codes"][:1], rtol=1e-5, atol=1e-6)


def test_small_cnn_works_at_32(small):
  model, variables = small  # no size-dependent parameters: the 8×8 variables fit 32×32 inputs too
  x = jax.random.uniform(jax.random.key(4), (2, 32, 32, 3))
  out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  assert out["codes"].shape == (2, 16) and out["class_logits"].shape == (2, 10)


def test_gradients_reach_backbone_and_heads(small):
  model, variables = small
  x = jax.random.uniform(jax.random.key(5), (4, 8, 8, 3)) - 0.5

  def loss(params):
    out, _ = _train(model, {**variables, "params": params}, x, jax.random.key(6))
    return out["codes"].sum() + out["class_logits"].sum()

  grads = jax.jit(jax.grad(loss))(variables["params"])
  for part in ("backbone", "hash", "classifier"):
    assert any(np.abs(g).sum() > 0 for g in jax.tree.leaves(grads[part])), part


def test_batchnorm_statistics_span_devices(small):
  """With axis_name, BatchNorm averages statistics over the device axis: two shards of 4 give exactly what
  one device computes on the batch of 8 (vmap with an axis name stands in for pmap on CPU)."""
  _, variables = small
  cfg = {"name": "small_cnn", "bits": 16, "num_classes": 10, "width": 8, "dropout": 0.0}
  single, sharded = models.build_model(cfg), models.build_model(cfg, axis_name="devices")
  x = jax.random.normal(jax.random.key(1), (8, 8, 8, 3))
  out, upd = jax.jit(lambda v, x: _train(single, v, x, jax.random.key(2)))(variables, x)
  shard_fn = jax.vmap(lambda v, x: _train(sharded, v, x, jax.random.key(2)), (None, 0), axis_name="devices")
  out_s, upd_s = jax.jit(shard_fn)(variables, x.reshape(2, 4, 8, 8, 3))
  np.testing.assert_allclose(out_s["hash_logits"].reshape(8, -1), out["hash_logits"], rtol=1e-4, atol=1e-5)
  for a, b in zip(jax.tree.leaves(upd_s["batch_stats"]), jax.tree.leaves(upd["batch_stats"])):
    np.testing.assert_allclose(a[0], b, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(a[1], b, rtol=1e-4, atol=1e-6)
  # Without the axis name each shard would normalise on its own 4 images, which differs.
  local_fn = jax.vmap(lambda v, x: _train(single, v, x, jax.random.key(2)), (None, 0))
  local = jax.jit(local_fn)(variables, x.reshape(2, 4, 8, 8, 3))[0]
  assert not np.allclose(local["hash_logits"].reshape(8, -1), out["hash_logits"], atol=1e-3)


def test_mobilenet_batchnorm_uses_axis_name():
  # Every BatchNorm must reduce over the named axis: applying outside a binding of it fails, inside it works.
  model = models.build_model({"name": "mobilenet_v2", "bits": 8, "num_classes": 0}, axis_name="devices")
  variables = _shape_vars(model, 32)
  x = jax.ShapeDtypeStruct((2, 2, 32, 32, 3), jnp.float32)
  fn = lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])
  out, _ = jax.eval_shape(jax.vmap(fn, (None, 0), axis_name="devices"), variables, x)
  assert out["codes"].shape == (2, 2, 8)
  with pytest.raises(NameError, match="devices"):
    jax.eval_shape(fn, variables, jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))


# ------------------------------------------------------------------------------------------ precision, config


@pytest.mark.parametrize("name", ["small_cnn", "vgg_f", "mobilenet_v2"])
def test_bfloat16_compute_float32_outputs(name):
  size = 32 if name != "vgg_f" else 224
  model = models.build_model({"name": name, "bits": 24, "num_classes": 5, "dtype": "bfloat16"})
  variables = _shape_vars(model, size)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
  out, _ = _train_apply_shapes(model, variables, size)
  assert out["features"].dtype == jnp.bfloat16
  assert out["codes"].dtype == out["hash_logits"].dtype == out["class_logits"].dtype == jnp.float32


def test_bfloat16_params():
  model = models.build_model({"name": "small_cnn", "bits": 8, "num_classes": 3, "param_dtype": "bfloat16"})
  variables = _shape_vars(model, 8)
  assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(variables["params"]))


def test_bfloat16_forward_close_to_float32(small):
  model, variables = small
  cfg = {"name": "small_cnn", "bits": 16, "num_classes": 10, "width": 8, "dtype": "bfloat16"}
  bf16 = models.build_model(cfg)
  x = jax.random.uniform(jax.random.key(7), (4, 8, 8, 3)) - 0.5
  f32_out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  bf_out = jax.jit(lambda v, x: bf16.apply(v, x, train=False))(variables, x)
  np.testing.assert_allclose(bf_out["codes"], f32_out["codes"], atol=0.03)


def test_build_model_from_default_config():
  cfg = default_config.get_config()
  model = models.build_model(cfg.model)
  assert isinstance(model, models.HashingModel) and model.bits == cfg.model.bits
  variables = _shape_vars(model, cfg.data.image_size)
  out, _ = _train_apply_shapes(model, variables, cfg.data.image_size)
  assert out["codes"].shape == (2, cfg.model.bits) and out["class_logits"].shape == (2, cfg.model.num_classes)


def test_unknown_backbone():
  with pytest.raises(ValueError, match="resnet"):
    models.build_backbone("resnet")


def test_registered_backbone_is_a_valid_model_name():
  import flax.linen as nn

  from configs import default
  from ssdh_jax import config_checks, preprocessing

  class Flat(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      return nn.Dense(16)(x.reshape(x.shape[0], -1))

  spec = models.BackboneSpec(lambda **_: Flat(), image_size=8, feature_dim=16, preprocess="imagenet")
  models.register_backbone("test_flat", spec)
  with pytest.raises(ValueError, match="already registered"):
    models.register_backbone("test_flat", spec)
  assert models.backbone_spec("test_flat") is spec and "test_flat" in models.available_backbones()
  assert preprocessing.default_preprocess("test_flat") == "imagenet"
  c = default.get_config()
  c.model.name, c.model.bits = "test_flat", 8
  config_checks.check_config(c)
  out = models.build_model(c.model).init_with_output(jax.random.PRNGKey(0), jnp.zeros((2, 8, 8, 3)))[0]
  assert out["codes"].shape == (2, 8) and out["features"].shape == (2, 16)
  with pytest.raises(ValueError, match="unknown backbone 'nope'"):
    models.build_backbone("nope")
