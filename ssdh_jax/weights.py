"""Pretrained-weight import into the Flax parameter tree, without torch.

Sources:
  * torchvision state dicts (.pth) for alexnet, vgg16, vgg19, mobilenet_v2, in torch's zip format (torch ≥ 1.6)
    or the legacy single-stream format (what torchvision's published mobilenet_v2-b0353104.pth is). Files are
    read with a restricted unpickler: only OrderedDict, torch's tensor-rebuild functions and the *Storage type
    names resolve, to stand-ins defined here; any other global raises (torch's weights_only=True semantics).
  * VGG-F as a NumPy .npz (converted from the authors' Caffe model), layout:

      key       shape                  meaning
      conv1_w   (11, 11, 3, 64)        HWIO; input channels in BGR order (Caffe feeds BGR)
      conv1_b   (64,)
      conv2_w   (5, 5, 64, 256)        conv2_b (256,)
      conv3_w   (3, 3, 256, 256)       conv3_b (256,)     conv4_*, conv5_* the same
      fc6_w     (6, 6, 256, 4096)      fc6 as a 6×6 HWIO filter over pool5 (row, column, channel)
      fc6_b     (4096,)
      fc7_w     (4096, 4096)           (in, out)          fc7_b (4096,)
      fc8_w     (4096, 1000)           optional ImageNet classifier, (in, out); fc8_b (1000,)
      mean      (H, W, 3)              optional BGR mean image, 0–255 (`read_vgg_f_mean`)

    `vgg_f_npz_from_caffe` converts pycaffe blobs (conv (O, I, kh, kw), fc (out, in), C·H·W-ordered fc6 input,
    mean (3, H, W)) to this layout.

`load_pretrained(variables, path, model_name)` replaces the backbone's params (and BatchNorm statistics) and
leaves the hash/class heads as initialised. Layout conversions: conv OIHW → HWIO, linear (out, in) → (in, out),
the first fc layer's (C, H, W) input order → Flax's (H, W, C) flatten order, BatchNorm weight/bias →
params scale/bias, running_mean/var → batch_stats mean/var. A missing, unexpected or mis-shaped tensor raises
`CheckpointMismatchError` naming the key and the file.
"""

import collections
import dataclasses
import hashlib
import math
import os
import pickle
import shutil
import struct
import tarfile
import urllib.request
import zipfile
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import traverse_util

from ssdh_jax import models
from ssdh_jax.models import layout

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES = {
  "FloatStorage": np.dtype(np.float32),
  "DoubleStorage": np.dtype(np.float64),
  "HalfStorage": np.dtype(np.float16),
  "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
  "LongStorage": np.dtype(np.int64),
  "IntStorage": np.dtype(np.int32),
  "ShortStorage": np.dtype(np.int16),
  "CharStorage": np.dtype(np.int8),
  "ByteStorage": np.dtype(np.uint8),
  "BoolStorage": np.dtype(np.bool_),
  "UntypedStorage": np.dtype(np.uint8),
}
_DTYPE_STORAGES = {v: k for k, v in _STORAGE_DTYPES.items() if k != "UntypedStorage"}


class CheckpointMismatchError(ValueError):
  """A checkpoint's tensors do not match the model: missing, unexpected or mis-shaped keys."""


# ------------------------------------------------------------------------------------------ torch reading


@dataclasses.dataclass(frozen=True)
class _StorageType:
  dtype: np.dtype


@dataclasses.dataclass
class _StorageRef:
  key: str
  dtype: np.dtype
  numel: int
  view: tuple[int, int] | None = None  # legacy view: (element offset, element count) into the root storage


@dataclasses.dataclass
class _LazyTensor:
  storage: _StorageRef
  offset: int
  shape: tuple[int, ...]
  stride: tuple[int, ...]


def _rebuild_tensor_v2(
  storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None
):
  del requires_grad, backward_hooks, metadata
  return _LazyTensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_tensor(storage, storage_offset, size, stride):
  return _LazyTensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  return data


_REBUILDERS = {
  "_rebuild_tensor_v2": _rebuild_tensor_v2,
  "_rebuild_tensor": _rebuild_tensor,
  "_rebuild_parameter": _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only the globals a tensor state dict needs, each to a harmless stand-in; storages come back as
  `_StorageRef`s registered in `self.storages` and tensors as `_LazyTensor`s, filled in after unpickling."""

  def __init__(self, file, source: str):
    super().__init__(file)
    self.source = source
    self.storages: dict[str, _StorageRef] = {}

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if module == "torch._utils" and name in _REBUILDERS:
      return _REBUILDERS[name]
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(_STORAGE_DTYPES[name])
    raise pickle.UnpicklingError(
      f"{self.source}: refusing to unpickle global '{module}.{name}' (only tensor state dicts are allowed)"
    )

  def persistent_load(self, pid: Any) -> _StorageRef:
    if not isinstance(pid, tuple) or not pid:
      raise pickle.UnpicklingError(f"{self.source}: malformed persistent id {pid!r}")
    typename = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
    if typename != "storage" or len(pid) not in (5, 6):
      raise pickle.UnpicklingError(f"{self.source}: unsupported persistent id {pid!r}")
    storage_type, key, _location, numel = pid[1:5]
    if not isinstance(storage_type, _StorageType):
      raise pickle.UnpicklingError(f"{self.source}: storage {key!r} has unsupported type {storage_type!r}")
    key = str(key)
    ref = self.storages.setdefault(key, _StorageRef(key, storage_type.dtype, int(numel)))
    view = pid[5] if len(pid) == 6 else None
    if view is not None:  # legacy format: (view_key, element offset, element count)
      _, offset, size = view
      return _StorageRef(key, ref.dtype, ref.numel, (int(offset), int(size)))
    return ref


def _materialize(t: _LazyTensor, storages: Mapping[str, np.ndarray], source: str) -> np.ndarray:
  """A C-contiguous copy of the strided view that `t` describes, bounds-checked against its storage."""
  base = storages[t.storage.key]
  if t.storage.view is not None:
    off, size = t.storage.view
    if off < 0 or off + size > base.size:
      raise ValueError(f"{source}: storage view of {t.storage.key!r} out of bounds")
    base = base[off : off + size]
  if len(t.shape) != len(t.stride) or any(s < 0 for s in t.stride) or any(n < 0 for n in t.shape):
    raise ValueError(f"{source}: bad tensor geometry size={t.shape} stride={t.stride}")
  if math.prod(t.shape) == 0:
    return np.zeros(t.shape, base.dtype)
  contiguous = tuple(int(s) for s in np.cumprod((1, *t.shape[:0:-1]))[::-1])
  if t.offset == 0 and t.stride == contiguous and math.prod(t.shape) == base.size:
    return base.reshape(t.shape)  # the whole storage in C order (the usual case): no copy
  last = t.offset + sum((n - 1) * s for n, s in zip(t.shape, t.stride))
  if t.offset < 0 or last >= base.size:
    raise ValueError(f"{source}: tensor reads past the end of storage {t.storage.key!r}")
  view = np.lib.stride_tricks.as_strided(
    base[t.offset :], shape=t.shape, strides=[s * base.itemsize for s in t.stride], writeable=False
  )
  return np.array(view, copy=True, order="C")


def _resolve(obj: Any, storages: Mapping[str, np.ndarray], source: str) -> Any:
  if isinstance(obj, _LazyTensor):
    return _materialize(obj, storages, source)
  if isinstance(obj, dict):
    return type(obj)((k, _resolve(v, storages, source)) for k, v in obj.items())
  if isinstance(obj, (list, tuple)):
    return type(obj)(_resolve(v, storages, source) for v in obj)
  return obj


def _read_into(f, ref: _StorageRef, source: str) -> np.ndarray:
  """Reads ref.numel elements from file object `f` into a fresh writable array (one copy, no bytes object)."""
  arr = np.empty(ref.numel, ref.dtype)
  buf, got = memoryview(arr.view(np.uint8)), 0
  while got < buf.nbytes:
    n = f.readinto(buf[got:])
    if not n:
      raise ValueError(f"{source}: file ends inside storage {ref.key!r}")
    got += n
  return arr


def _read_zip(path: str) -> Any:
  with zipfile.ZipFile(path) as zf:
    pkls = sorted((n for n in zf.namelist() if n.endswith("data.pkl")), key=len)
    if not pkls:
      raise ValueError(f"{path}: zip file without data.pkl is not a torch checkpoint")
    prefix = pkls[0][: -len("data.pkl")]
    byteorder = "little"
    if f"{prefix}byteorder" in zf.namelist():
      byteorder = zf.read(f"{prefix}byteorder").decode().strip()
    with zf.open(pkls[0]) as f:
      unpickler = _RestrictedUnpickler(f, path)
      obj = unpickler.load()
    storages = {}
    for key, ref in unpickler.storages.items():
      name = f"{prefix}data/{key}"
      if zf.getinfo(name).file_size < ref.numel * ref.dtype.itemsize:
        raise ValueError(f"{path}: storage {key!r} is shorter than its {ref.numel} elements")
      with zf.open(name) as f:
        storages[key] = _read_into(f, ref, path)
      if byteorder != "little" and ref.dtype.itemsize > 1:
        storages[key].byteswap(inplace=True)
  return _resolve(obj, storages, path)


def _read_legacy(path: str) -> Any:
  """torch < 1.6 format: pickles (magic, protocol, sys_info, object, storage keys), then each storage as an
  int64 element count followed by its raw bytes, in the order of the key list."""
  with open(path, "rb") as f:
    try:
      magic = _RestrictedUnpickler(f, path).load()
    except Exception as e:  # any parse failure here means: not this format
      raise ValueError(f"{path}: neither a torch zip checkpoint nor a legacy torch file ({e})") from None
    if magic != _LEGACY_MAGIC:
      raise ValueError(f"{path}: not a torch checkpoint (bad magic number)")
    protocol = _RestrictedUnpickler(f, path).load()
    if protocol != _LEGACY_PROTOCOL:
      raise ValueError(f"{path}: unsupported legacy protocol version {protocol}")
    sys_info = _RestrictedUnpickler(f, path).load()
    if not sys_info.get("little_endian", True):
      raise ValueError(f"{path}: big-endian legacy checkpoints are not supported")
    unpickler = _RestrictedUnpickler(f, path)
    obj = unpickler.load()
    keys = _RestrictedUnpickler(f, path).load()
    storages = {}
    for key in keys:
      ref = unpickler.storages[str(key)]
      (numel,) = struct.unpack("<q", f.read(8))
      if numel != ref.numel:
        raise ValueError(f"{path}: storage {key!r} has {numel} elements on disk, {ref.numel} in its header")
      storages[str(key)] = _read_into(f, ref, path)
  return _resolve(obj, storages, path)


def read_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a torch state dict (zip or legacy format) into NumPy arrays, without torch and without unpickling
  anything but tensors.

  Args:
    path: a .pth/.pt file holding a state dict, or a dict with a 'state_dict' / 'model' entry holding one.
      A 'module.' prefix on every key (DataParallel) is dropped.

  Returns:
    Ordered {key: array} in the tensors' dtypes (float32 for torchvision weights), C-contiguous.
  """
  path = os.fspath(path)
  if zipfile.is_zipfile(path):
    obj = _read_zip(path)
  elif tarfile.is_tarfile(path):
    raise ValueError(f"{path}: the pre-0.4 tar checkpoint format is not supported; re-save it with torch")
  else:
    obj = _read_legacy(path)
  if isinstance(obj, dict) and not all(isinstance(v, np.ndarray) for v in obj.values()):
    for name in ("state_dict", "model"):
      if isinstance(obj.get(name), dict):
        obj = obj[name]
        break
  if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
    raise ValueError(f"{path}: does not hold a state dict of tensors")
  state = dict(obj)
  if state and all(k.startswith("module.") for k in state):
    state = {k[len("module.") :]: v for k, v in state.items()}
  return state


# ------------------------------------------------------------------------------------------ torch writing


class _PickleEmitter:
  """Writes the protocol-2 opcodes torch.save produces for an OrderedDict of tensors (no memo needed)."""

  def __init__(self):
    self.buf = bytearray(b"\x80\x02")

  def glob(self, module: str, name: str) -> None:
    self.buf += b"c" + f"{module}\n{name}\n".encode()

  def string(self, s: str) -> None:
    b = s.encode("utf-8")
    self.buf += b"X" + struct.pack("<I", len(b)) + b

  def integer(self, n: int) -> None:
    if 0 <= n < 256:
      self.buf += b"K" + bytes([n])
    elif 0 <= n < 65536:
      self.buf += b"M" + struct.pack("<H", n)
    elif -(2**31) <= n < 2**31:
      self.buf += b"J" + struct.pack("<i", n)
    else:
      enc = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
      self.buf += b"\x8a" + bytes([len(enc)]) + enc

  def int_tuple(self, values) -> None:
    self.buf += b"("
    for v in values:
      self.integer(int(v))
    self.buf += b"t"

  def raw(self, opcodes: bytes) -> None:
    self.buf += opcodes


def save_torch_state_dict(state: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
  """Writes {key: array} as a torch zip-format state dict (what `torch.save(model.state_dict())` writes):
  archive/data.pkl, archive/data/<i> raw little-endian storages, archive/version, archive/byteorder.

  Args:
    state: arrays of a torch-supported dtype (float32/64/16, bfloat16, int8–64, uint8, bool).
    path: output file.
  """
  em = _PickleEmitter()
  em.glob("collections", "OrderedDict")
  em.raw(b")R(")  # OrderedDict() then MARK for SETITEMS
  blobs = []
  for i, (key, value) in enumerate(state.items()):
    arr = np.asarray(value, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
    if arr.dtype not in _DTYPE_STORAGES:
      raise ValueError(f"tensor {key!r}: dtype {arr.dtype} has no torch storage type")
    em.string(key)
    em.glob("torch._utils", "_rebuild_tensor_v2")
    em.raw(b"((")  # MARK args, MARK persistent id
    em.string("storage")
    em.glob("torch", _DTYPE_STORAGES[arr.dtype])
    em.string(str(i))
    em.string("cpu")
    em.integer(arr.size)
    em.raw(b"tQ")  # TUPLE, BINPERSID
    em.integer(0)
    em.int_tuple(arr.shape)
    em.int_tuple(s // arr.itemsize for s in arr.strides)
    em.raw(b"\x89")  # requires_grad=False
    em.glob("collections", "OrderedDict")
    em.raw(b")RtR")  # backward_hooks=OrderedDict(), TUPLE, REDUCE
    blobs.append(arr.astype(arr.dtype.newbyteorder("<"), copy=False).reshape(-1))
  em.raw(b"u.")  # SETITEMS, STOP
  with zipfile.ZipFile(os.fspath(path), "w", zipfile.ZIP_STORED) as zf:
    zf.writestr("archive/data.pkl", bytes(em.buf))
    zf.writestr("archive/byteorder", "little")
    for i, blob in enumerate(blobs):
      with zf.open(f"archive/data/{i}", "w", force_zip64=blob.nbytes > 2**31 - 1) as f:
        f.write(memoryview(blob.view(np.uint8)))  # no bytes copy of large tensors
    zf.writestr("archive/version", "3\n")


# ------------------------------------------------------------------------------------------ layouts


def _spec(model_name: str) -> models.BackboneSpec | None:
  """The registered backbone's spec, or None for a name nothing registered."""
  return models.backbone_spec(model_name) if model_name in models.available_backbones() else None


def _layers_for(model_name: str, fmt: str) -> tuple[list[layout.Layer], str]:
  """The backbone module's layout for a checkpoint format ('torch' or 'npz') and its key separator."""
  spec = models.backbone_spec(model_name)  # an unknown name: the registry's error
  make = spec.npz_layout if fmt == "npz" else spec.torch_layout
  if make is None:
    have = [n for n in ("torch", "npz") if getattr(spec, f"{n}_layout") is not None]
    raise ValueError(
      f"backbone {model_name!r} has no {'.npz' if fmt == 'npz' else 'torchvision'} weight layout"
      + (f" (it loads {' or '.join(have)} checkpoints)" if have else " (it has no pretrained weights)")
    )
  return make(), "_" if fmt == "npz" else "."


def _backbone_root(params: Mapping[str, Any]) -> tuple[str, ...]:
  return ("backbone",) if "backbone" in params else ()


def _plan(variables: Mapping[str, Any], model_name: str, fmt: str):
  """Matches checkpoint keys to the Flax leaves of `variables`.

  Returns:
    target: flat {(collection, *path, leaf): leaf}; expected: {checkpoint key: (flat key, layout.Tensor)};
    ignored: checkpoint keys that may be present and are skipped; problems: model leaves no key maps to.
  """
  layers, sep = _layers_for(model_name, fmt)
  root = _backbone_root(variables["params"])
  target = traverse_util.flatten_dict(dict(variables))
  expected: dict[str, tuple[tuple[str, ...], layout.Tensor]] = {}
  ignored = {"mean"} if fmt == "npz" else set()  # the .npz mean image is read by read_vgg_f_mean
  for layer in layers:
    path = root + layer.dst
    if layer.classifier and ("params", *path, "kernel") not in target:
      ignored |= {f"{layer.src}{sep}{t.suffix}" for t in layer.tensors}
      continue
    for t in layer.tensors:
      tkey = (t.collection, *path, t.leaf)
      if (
        t.leaf == "bias"
        and tkey not in target
        and t.collection == "params"
        and layer.tensors[0].leaf == "kernel"
      ):
        continue  # bias-free conv: a bias in the file is then reported as unexpected
      expected[f"{layer.src}{sep}{t.suffix}"] = (tkey, t)
    if layer.tensors is layout.BN:
      ignored.add(f"{layer.src}.num_batches_tracked")
  problems = []
  covered = {tkey for tkey, _ in expected.values()}
  for tkey in target:
    if tkey[1 : 1 + len(root)] == root and tkey[0] in ("params", "batch_stats") and tkey not in covered:
      problems.append(f"model {model_name} leaf {'/'.join(tkey)} has no tensor in the checkpoint layout")
  for key, (tkey, _) in expected.items():
    if tkey not in target:
      problems.append(f"layout tensor '{key}' maps to {'/'.join(tkey)}, which the model does not have")
  return target, expected, ignored, problems


def expected_checkpoint_shapes(
  variables: Mapping[str, Any], model_name: str, fmt: str = "torch"
) -> dict[str, tuple[int, ...]]:
  """The tensors a checkpoint must hold to fill the backbone of `variables`: {key: shape} in the checkpoint's
  own layout ('torch': torchvision names, OIHW / (out, in); 'npz': the VGG-F layout). Leaves may be
  jax.ShapeDtypeStruct, so `jax.eval_shape` of an init is enough."""
  target, expected, _, problems = _plan(variables, model_name, fmt)
  if problems:
    raise CheckpointMismatchError("; ".join(problems))
  return {k: t.source_shape(tuple(target[tkey].shape)) for k, (tkey, t) in expected.items()}


def _import(
  state: Mapping[str, np.ndarray], variables: Mapping[str, Any], model_name: str, fmt: str, source: str
) -> dict[str, Any]:
  target, expected, ignored, problems = _plan(variables, model_name, fmt)
  for key, (tkey, t) in expected.items():
    if tkey not in target:
      continue
    if key not in state:
      problems.append(f"missing tensor '{key}' (expected shape {t.source_shape(tuple(target[tkey].shape))})")
      continue
    want = t.source_shape(tuple(target[tkey].shape))
    if tuple(state[key].shape) != want:
      problems.append(f"tensor '{key}' has shape {tuple(state[key].shape)}, expected {want}")
  for key in state:
    if key not in expected and key not in ignored:
      problems.append(f"unexpected tensor '{key}' of shape {tuple(np.shape(state[key]))}")
  if problems:
    shown = "\n  ".join(problems[:20]) + (
      f"\n  … and {len(problems) - 20} more" if len(problems) > 20 else ""
    )
    raise CheckpointMismatchError(f"{source}: checkpoint does not fit backbone {model_name}:\n  {shown}")
  for key, (tkey, t) in expected.items():
    target[tkey] = jnp.asarray(t.to_flax(np.asarray(state[key])), dtype=target[tkey].dtype)
  return traverse_util.unflatten_dict(target)


def _export(variables: Mapping[str, Any], model_name: str, fmt: str) -> dict[str, np.ndarray]:
  layers, sep = _layers_for(model_name, fmt)
  root = _backbone_root(variables["params"])
  flat = traverse_util.flatten_dict(dict(variables))
  out = {}
  for layer in layers:
    path = root + layer.dst
    if layer.classifier and ("params", *path, "kernel") not in flat:
      continue
    for t in layer.tensors:
      tkey = (t.collection, *path, t.leaf)
      if tkey in flat:
        out[f"{layer.src}{sep}{t.suffix}"] = np.asarray(
          t.from_flax(np.asarray(flat[tkey], np.float32)), order="C"
        )
    if layer.tensors is layout.BN and fmt == "torch":
      out[f"{layer.src}.num_batches_tracked"] = np.array(0, np.int64)
  return out


# ------------------------------------------------------------------------------------------ public API


def torch_state_dict_to_variables(
  state: Mapping[str, np.ndarray], variables: Mapping[str, Any], model_name: str, source: str = "<state dict>"
) -> dict[str, Any]:
  """Copies a torchvision state dict into `variables` (backbone only); see `load_pretrained`."""
  return _import(state, variables, model_name, "torch", source)


def variables_to_torch_state_dict(variables: Mapping[str, Any], model_name: str) -> dict[str, np.ndarray]:
  """The backbone of `variables` as a torchvision-named float32 state dict (inverse of the import), including
  the classifier when the backbone has one and BatchNorm `num_batches_tracked` (0)."""
  return _export(variables, model_name, "torch")


def variables_to_vgg_f_npz(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The VGG-F backbone of `variables` in the .npz layout of this module's docstring."""
  return _export(variables, "vgg_f", "npz")


def save_vgg_f_npz(
  variables: Mapping[str, Any], path: str | os.PathLike, mean: np.ndarray | None = None
) -> None:
  """Writes a VGG-F backbone (and optionally a BGR mean image (H, W, 3)) as an .npz in the documented layout."""
  arrays = variables_to_vgg_f_npz(variables)
  if mean is not None:
    arrays["mean"] = np.asarray(mean, np.float32)
  np.savez(os.fspath(path), **arrays)


def read_vgg_f_mean(path: str | os.PathLike) -> np.ndarray | None:
  """The BGR mean image (H, W, 3) float32 stored in a VGG-F .npz, or None when it has none."""
  with np.load(os.fspath(path), allow_pickle=False) as z:
    return np.asarray(z["mean"], np.float32) if "mean" in z.files else None


def vgg_f_npz_from_caffe(blobs: Mapping[str, Any], mean: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Converts Caffe VGG-F blobs to the .npz layout.

  Args:
    blobs: {'conv1': (W (64, 3, 11, 11), b (64,)), …, 'fc6': (W (4096, 9216), b), 'fc7': …, ['fc8': …]}, as
      pycaffe's `{name: (p[0].data, p[1].data) for name, p in net.params.items()}` gives them.
    mean: optional Caffe mean blob (3, H, W) or (1, 3, H, W), BGR.

  Returns:
    arrays for `np.savez`.
  """
  out = {}
  for name, (w, b) in blobs.items():
    w, b = np.asarray(w, np.float32), np.asarray(b, np.float32).reshape(-1)
    if name.startswith("conv"):
      w = w.transpose(2, 3, 1, 0)
    elif name == "fc6":
      s = math.isqrt(w.shape[1] // 256)
      w = w.reshape(w.shape[0], 256, s, s).transpose(2, 3, 1, 0)
    else:
      w = w.T
    out[f"{name}_w"], out[f"{name}_b"] = w, b
  if mean is not None:
    out["mean"] = np.asarray(mean, np.float32).reshape(3, *np.shape(mean)[-2:]).transpose(1, 2, 0)
  return out


def load_pretrained(variables: Mapping[str, Any], path: str | os.PathLike, model_name: str) -> dict[str, Any]:
  """Replaces the backbone params (and BatchNorm statistics) of `variables` with a pretrained checkpoint.

  Args:
    variables: {'params': …, ['batch_stats': …]} of a HashingModel (backbone under 'backbone'; the hash and
      class heads are kept) or of a bare backbone (`build_backbone`; its classifier is loaded when it has one,
      and the checkpoint's classifier is ignored when it has none). Leaves may be arrays or
      jax.ShapeDtypeStruct (only shapes and dtypes are read).
    path: torchvision .pth (alexnet, vgg16, vgg19, mobilenet_v2) or VGG-F .npz, or a name that
      `resolve_pretrained` turns into one ('torchvision' / 'torchvision:<model>').
    model_name: the backbone's registry name.

  Returns:
    A new variables dict; loaded leaves are jnp arrays in the target leaves' dtypes.

  Raises:
    CheckpointMismatchError: missing, unexpected or mis-shaped tensors (all named, with the file).
  """
  path = resolve_pretrained(os.fspath(path), model_name)
  if path.endswith(".npz"):
    with np.load(path, allow_pickle=False) as z:
      state = {k: z[k] for k in z.files}
    return _import(state, variables, model_name, "npz", path)
  return _import(read_torch_state_dict(path), variables, model_name, "torch", path)


def torchvision_models() -> list[str]:
  """Registered backbones with a published torchvision checkpoint (`BackboneSpec.torchvision_url`)."""
  return [n for n in models.available_backbones() if models.backbone_spec(n).torchvision_url]


def _torchvision_url(model_name: str) -> str:
  spec = _spec(model_name)
  if spec is None or not spec.torchvision_url:
    raise ValueError(f"backbone {model_name!r} has no torchvision checkpoint (those that do: "
                     f"{', '.join(torchvision_models())})")  # fmt: skip
  return spec.torchvision_url


def packaged_weights(model_name: str) -> str | None:
  """Path of `model_name`'s torchvision checkpoint inside an installed weight package (the backbone's
  `BackboneSpec.packaged`), else None."""
  import importlib.util

  backbone = _spec(model_name)
  if backbone is None or backbone.packaged is None:
    return None
  module, inside, _ = backbone.packaged
  spec = importlib.util.find_spec(module)
  if spec is None or not spec.submodule_search_locations:
    return None
  path = os.path.join(next(iter(spec.submodule_search_locations)), inside)
  return path if os.path.exists(path) else None


def _cache_dir() -> str:
  return os.path.join(os.path.expanduser("~"), ".cache", "ssdh_jax")


def check_pretrained(spec: str, model_name: str) -> str | None:
  """Checks what config.model.pretrained names, without reading or downloading anything: a file that exists
  (returns None), or 'torchvision' / 'torchvision:<model>' with <model> a registered backbone that has a
  `BackboneSpec.torchvision_url` (returns <model>). Raises FileNotFoundError / ValueError (one line)."""
  if not spec.startswith("torchvision"):
    if not os.path.exists(spec):
      raise FileNotFoundError(f"config.model.pretrained: {spec!r} does not exist")
    return None
  name = spec.split(":", 1)[1] if ":" in spec else model_name
  have = ", ".join(torchvision_models())
  if spec not in ("torchvision", f"torchvision:{name}"):
    raise ValueError(
      f"config.model.pretrained: {spec!r}: expected a file path, 'torchvision' or 'torchvision:<model>' with "
      f"<model> one of {have}"
    )
  if name not in torchvision_models():
    raise ValueError(
      f"config.model.pretrained: {spec!r}: backbone {name!r} has no torchvision checkpoint; 'torchvision:<model>' "
      f"takes one of {have} (a registered backbone gets one with BackboneSpec.torchvision_url)"
    )
  return name


def resolve_pretrained(spec: str, model_name: str, *, download: bool = True) -> str:
  """The checkpoint file that config.model.pretrained names.

  A path is returned as is (it must exist). 'torchvision' (the run's backbone) or 'torchvision:<model>' means
  torchvision's published ImageNet checkpoint, looked up in this order: an installed weight package
  (`BackboneSpec.packaged`), the local cache (~/.cache/ssdh_jax), then a download into that cache when `download` (and a
  network) allows. When none works, the error says how to get the file.
  """
  name = check_pretrained(spec, model_name)
  if name is None:
    return spec
  found = packaged_weights(name)
  if found:
    return found
  url = _torchvision_url(name)
  cached = os.path.join(_cache_dir(), os.path.basename(url))
  if os.path.exists(cached):
    return cached
  packaged = _spec(name).packaged  # `name` passed the torchvision_models() check above
  how = f"download {url} into {_cache_dir()}/" + (f", or `{packaged[2]}`" if packaged else "")
  if not download:
    raise FileNotFoundError(f"config.model.pretrained={spec!r}: no local copy; {how}")
  try:
    return fetch_torchvision_weights(name)
  except OSError as e:  # URLError and timeouts are OSErrors
    raise FileNotFoundError(f"config.model.pretrained={spec!r}: download failed ({e}); {how}") from None


def fetch_torchvision_weights(model_name: str, cache_dir: str | os.PathLike | None = None) -> str:
  """Path of torchvision's published ImageNet checkpoint for `model_name`, downloaded into `cache_dir`
  (default ~/.cache/ssdh_jax) unless already there. The download's SHA-256 must start with the hash fragment
  in the file name (torchvision's convention)."""
  url = _torchvision_url(model_name)
  cache_dir = os.fspath(cache_dir or _cache_dir())
  dest = os.path.join(cache_dir, os.path.basename(url))
  if os.path.exists(dest):
    return dest
  os.makedirs(cache_dir, exist_ok=True)
  tmp = dest + ".part"
  with urllib.request.urlopen(url, timeout=30) as r, open(tmp, "wb") as f:  # no DNS hang without a network
    shutil.copyfileobj(r, f)
  with open(tmp, "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  fragment = os.path.basename(url).rsplit("-", 1)[-1].split(".")[0]
  if not digest.startswith(fragment):
    os.remove(tmp)
    raise ValueError(f"{url}: SHA-256 {digest} does not start with {fragment}")
  os.replace(tmp, dest)
  return dest
