"""On-disk cache of a frozen backbone prefix's output, one row per image.

With `model.trainable` naming a layer (or 'heads') the layers before it never change. When they also see no
random augmentation (`data.augment='none'`), their output for an image is a constant: it is computed once,
stored, and every training step and evaluation then runs only the trainable layers. A grid of runs that share
backbone, weights, input view and image pool pays for the prefix once.

Cache entry `<dir>/prefix-<key>.npy` (float32 (M, ...) activations, rows in ascending image id) with a
sidecar `<key>.json`: the key fields, the ids and a CRC-32 of the array bytes. The key is a sha256 over
everything the values depend on: backbone, prefix layer, weights file sha256 (or the init seed), compute dtype
and depthwise implementation, input size, resize, preprocessing, and a fingerprint of the images themselves.
A changed key computes a new entry (never a stale one); a file that fails its checksum or shape check is
rebuilt with a warning. Files are written under a temporary name and renamed, so a killed extraction leaves
no half-written entry; the blocks of rows it had finished stay in `prefix-<key>.parts/` and a rerun computes
only the rest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from ssdh_jax.data.sources import Examples
from ssdh_jax.models import pointwise

# 2: MobileNetV2's stem conv follows model.depthwise (shifted multiply-adds on CPU: another sum order).
_VERSION = 2
_CHUNK = 1 << 24


def _crc(array: np.ndarray) -> int:
  view = memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
  crc = 0
  for start in range(0, len(view), _CHUNK):
    crc = zlib.crc32(view[start : start + _CHUNK], crc)
  return crc


def file_sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def pool_images(splits: Mapping[str, Examples]) -> Examples:
  """The union of the splits' images, one row per id, ids ascending."""
  parts = list(splits.values())
  ids = np.concatenate([ex.ids for ex in parts])
  _, first = np.unique(ids, return_index=True)
  owner = np.searchsorted(np.cumsum([len(ex) for ex in parts]), first, side="right")
  offsets = np.concatenate([[0], np.cumsum([len(ex) for ex in parts])])
  rows = [(int(o), int(f - offsets[o])) for o, f in zip(owner, first)]
  if all(ex.in_memory for ex in parts):
    images = np.stack([parts[o].images[r] for o, r in rows]) if rows else np.zeros((0, 1, 1, 3), np.uint8)
  else:
    images = [parts[o].images[r] for o, r in rows]
  labels = np.stack([parts[o].labels[r] for o, r in rows])
  return Examples(images, labels, ids[first])


def images_fingerprint(pool: Examples) -> str:
  """sha256 over ids and image content (arrays) or paths with sizes and mtimes (files)."""
  h = hashlib.sha256(np.ascontiguousarray(pool.ids, np.int64).tobytes())
  if pool.in_memory:
    h.update(str(pool.images.shape).encode())
    h.update(np.ascontiguousarray(pool.images).tobytes())
  else:
    for p in pool.images:
      st = os.stat(p)
      h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
  return h.hexdigest()


def cache_key(config: Any, prefix_layer: int, images_fp: str) -> dict[str, Any]:
  """The fields a cached prefix output depends on (config: the full run config)."""
  m, d = config.model, config.data
  if m.pretrained:
    from ssdh_jax import weights as weights_lib

    weights = file_sha256(weights_lib.resolve_pretrained(m.pretrained, m.name))
  else:
    weights = f"random init, seed {int(config.seed)}"
  return {
    "version": _VERSION,
    "backbone": m.name,
    "prefix_layer": int(prefix_layer),
    "width": int(m.width) if m.name == "small_cnn" else 0,
    "weights_sha256": weights,
    "dtype": str(m.dtype),
    "depthwise": str(m.depthwise),
    "pointwise": pointwise.resolve_impl(m.pointwise),  # dot and conv sum in another order (ulps)
    "image_size": int(d.image_size),
    "resize_size": int(d.resize_size),
    "preprocess": m.preprocess,
    "images": images_fp,
  }


def _paths(cache_dir: str, key: Mapping[str, Any]) -> tuple[str, str]:
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
  return os.path.join(cache_dir, f"prefix-{digest}.npy"), os.path.join(cache_dir, f"prefix-{digest}.json")


def _read(npy: str, side: str, key: Mapping[str, Any], ids: np.ndarray) -> np.ndarray | None:
  """The cached array, or None when absent; a damaged entry is reported and treated as absent."""
  if not (os.path.exists(npy) and os.path.exists(side)):
    return None
  try:
    with open(side) as f:
      info = json.load(f)
    feats = np.load(npy, mmap_mode="r")
    problems = []
    if info.get("key") != dict(key):
      problems.append("its key fields differ")
    if not np.array_equal(np.asarray(info.get("ids", []), np.int64), ids):
      problems.append("its image ids differ")
    if feats.shape[0] != len(ids) or list(feats.shape) != info.get("shape"):
      problems.append(f"shape {feats.shape} != {info.get('shape')}")
    if not problems and _crc(feats) != info.get("crc32"):
      problems.append("checksum mismatch (corrupt file)")
  except (OSError, ValueError, json.JSONDecodeError) as e:
    problems = [f"unreadable ({e})"]
  if problems:
    logging.warning("feature cache %s is not usable (%s); computing it again", npy, "; ".join(problems))
    return None
  return np.asarray(feats)


def _write(npy: str, side: str, key: Mapping[str, Any], ids: np.ndarray, feats: np.ndarray) -> None:
  os.makedirs(os.path.dirname(npy), exist_ok=True)
  tmp_npy, tmp_side = f"{npy}.tmp-{os.getpid()}.npy", f"{side}.tmp-{os.getpid()}"
  np.save(tmp_npy, feats)
  with open(tmp_side, "w") as f:
    json.dump({"key": dict(key), "ids": ids.tolist(), "shape": list(feats.shape), "crc32": _crc(feats)}, f)
  os.replace(tmp_npy, npy)  # array first: a sidecar never points at a missing or partial array
  os.replace(tmp_side, side)


# Rows per chunk of an extraction in progress: each finished chunk is saved, so an interrupted extraction
# continues where it stopped (a MobileNetV2 prefix over CIFAR-10 runs for 10+ minutes on a laptop CPU).
CHUNK_ROWS = 4096


class _Progress:
  """A tqdm bar when asked for; otherwise a line on stderr (images/s, ETA) at most every `every_s` seconds, so
  a run with train.progress=False still says how far a long extraction has come."""

  def __init__(self, total: int, bar: bool, every_s: float):
    self.total, self.done, self.every_s = total, 0, every_s
    self.t0 = self.t_log = time.perf_counter()
    self.computed = 0  # rows computed since t0 (not read back from saved chunks)
    self.bar = None
    if bar:
      from tqdm.auto import tqdm

      self.bar = tqdm(total=total, desc="frozen prefix", unit="img", dynamic_ncols=True)

  def update(self, rows: int, computed: bool) -> None:
    self.done += rows
    if computed:
      self.computed += rows
    else:  # the rate counts rows computed since the last chunk read back, over that time only
      self.t0, self.computed = time.perf_counter(), 0
    if self.bar is not None:
      self.bar.update(rows)
    now = time.perf_counter()
    if now - self.t_log >= self.every_s or self.done == self.total:
      self.t_log = now
      rate = self.computed / max(now - self.t0, 1e-9)
      eta = (self.total - self.done) / rate if rate > 0 else float("nan")
      if self.computed:
        line = f"frozen prefix: {self.done}/{self.total} images, {rate:.0f} images/s, ETA {eta:.0f} s"
      else:
        line = f"frozen prefix: {self.done}/{self.total} images read back from an interrupted extraction"
      if self.bar is None:  # stderr, not logging: the commands keep the console at WARNING
        print(line, file=sys.stderr, flush=True)
      logging.info("%s", line)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


def _chunk_path(chunk_dir: str, start: int, stop: int) -> str:
  return os.path.join(chunk_dir, f"rows-{start:09d}-{stop:09d}.npy")


def _read_chunk(chunk_dir: str, start: int, stop: int) -> np.ndarray | None:
  path = _chunk_path(chunk_dir, start, stop)
  if not os.path.exists(path):
    return None
  try:
    part = np.load(path)
  except (OSError, ValueError) as e:
    logging.warning("feature cache chunk %s is unreadable (%s); computing it again", path, e)
    return None
  if part.shape[0] != stop - start or part.dtype != np.float32:
    logging.warning("feature cache chunk %s has shape %s; computing it again", path, part.shape)
    return None
  return part


def _write_chunk(chunk_dir: str, start: int, part: np.ndarray) -> None:
  os.makedirs(chunk_dir, exist_ok=True)
  path = _chunk_path(chunk_dir, start, start + len(part))
  tmp = f"{path}.tmp-{os.getpid()}.npy"
  np.save(tmp, part)
  os.replace(tmp, path)  # a chunk is there whole or not at all


def extract(
  prefix_fn: Callable[[np.ndarray], jax.Array],
  pool: Examples,
  batches: Callable[[Examples], Any],
  *,
  progress: bool = True,
  chunk_dir: str | None = None,
  chunk_rows: int | None = None,
  save_chunks: bool = True,
  log_every_s: float = 30.0,
) -> np.ndarray:
  """Runs `prefix_fn` (uint8 eval views (b,S,S,3) -> activations) over `pool` in order -> float32 (M, ...).

  chunk_dir: where each finished block of `chunk_rows` (default CHUNK_ROWS) rows is saved (when save_chunks) and read back from
    on a later call, so an interrupted extraction resumes; None: nothing is saved. The caller keys the folder
    by everything the values depend on (`load_or_extract` does).
  """
  total = len(pool)
  chunk_rows = int(chunk_rows or CHUNK_ROWS)
  out = None
  report = _Progress(total, progress, log_every_s)
  try:
    for start in range(0, total, chunk_rows):
      stop = min(start + chunk_rows, total)
      part = _read_chunk(chunk_dir, start, stop) if chunk_dir else None
      if part is not None:
        report.update(len(part), computed=False)
      else:
        part = _extract_rows(prefix_fn, pool.subset(np.arange(start, stop)), batches, report)
        if chunk_dir and save_chunks and stop < total:  # the last chunk goes straight into the entry
          _write_chunk(chunk_dir, start, part)
      if out is None:
        out = np.empty((total, *part.shape[1:]), np.float32)
      out[start:stop] = part
  finally:
    report.close()
  if out is None:
    raise RuntimeError("feature extraction over an empty image pool")
  return out


def _extract_rows(prefix_fn, rows: Examples, batches, report: _Progress) -> np.ndarray:
  parts: list[np.ndarray] = []
  pending = (
    None  # one batch in flight: JAX dispatches asynchronously, so the host prepares the next meanwhile
  )

  def collect(acts) -> None:
    acts = np.asarray(acts, np.float32)
    parts.append(acts)
    report.update(len(acts), computed=True)

  for batch in batches(rows):
    acts = prefix_fn(batch["image"])
    if pending is not None:
      collect(pending)
    pending = acts
  if pending is not None:
    collect(pending)
  got = sum(len(p) for p in parts)
  if got != len(rows):
    raise RuntimeError(f"feature extraction produced {got} rows for {len(rows)} images")
  return np.concatenate(parts)


def load_or_extract(
  config: Any,
  prefix_layer: int,
  splits: Mapping[str, Examples],
  prefix_fn: Callable[[np.ndarray], jax.Array],
  batches: Callable[[Examples], Any],
  cache_dir: str,
) -> tuple[dict[str, Examples], dict[str, Any]]:
  """The splits with each image replaced by its cached prefix output (computed and stored when missing).

  Returns:
    splits with float32 activation arrays as `images`, and a record (path, key, hit, seconds) for the report.
  """
  pool = pool_images(splits)
  key = cache_key(config, prefix_layer, images_fingerprint(pool))
  npy, side = _paths(cache_dir, key)
  t0 = time.perf_counter()
  feats = _read(npy, side, key, pool.ids)
  hit = feats is not None
  if feats is None:
    main = jax.process_index() == 0
    chunks = npy[: -len(".npy")] + ".parts"
    feats = extract(
      prefix_fn, pool, batches, progress=bool(config.train.progress), chunk_dir=chunks, save_chunks=main
    )
    if main:
      _write(npy, side, key, pool.ids, feats)
      shutil.rmtree(chunks, ignore_errors=True)
  out = {}
  for name, ex in splits.items():
    rows = np.searchsorted(pool.ids, ex.ids)
    out[name] = Examples(feats[rows], ex.labels, ex.ids, ex.origin)
  record = {"path": npy, "key": key, "hit": hit, "seconds": time.perf_counter() - t0, "shape": feats.shape}
  return out, record
