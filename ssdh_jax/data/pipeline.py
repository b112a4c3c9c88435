"""The semi-supervised input pipeline: validation pass, training batches, augmentation, eval batches, sharding.

Training batches (`train_batches`, `train_batch`): every batch of B = config.train.batch_size rows holds
n_lab = round(B * data.labeled_fraction) labeled rows and B - n_lab unlabeled rows (B labeled rows when
data.include_unlabeled is False or there is no unlabeled pool). The fraction is the same in every batch; it is
reached by oversampling the labeled pool, which is read as its own stream (the release instead repeats the
labeled list 4x in one shuffled list, which gives ~66/128 labeled rows per batch on average).

Order: the labeled and the unlabeled pool are each read as an endless stream of epochs; epoch e of a stream is a
permutation seeded by (seed, stream, e), and step s takes stream positions [s * n, (s + 1) * n). Augmentation
and the order of rows inside the batch are seeded by (seed, step). So the batch at step s is a pure function of
(splits, config, seed, s): a run resumed at step s sees exactly the batches the uninterrupted run would have seen,
and every labeled image appears once per pass over the labeled pool (len(train_labeled) / n_lab steps).

A batch is dict(image uint8 (B,S,S,3), labels float32 (B,C) (all zero for unlabeled rows), labeled bool (B,),
id int64 (B,)). With data.on_device_augment the images come un-augmented at their stored size (files: resized
to data.resize_size or image_size) and the trainer calls `device_augment(key, batch['image'], config)`.

Augmentation (data.augment):
  crop_flip      resize to resize_size x resize_size (when > 0) -> random image_size crop -> random h-flip
                 (VGG-F, AlexNet, VGG, MobileNetV2 with resize_size 256, image_size 224).
  pad_crop_flip  zero-pad by data.pad -> random image_size crop -> random h-flip (32x32 models).
  none           the evaluation transform.
Evaluation: resize to resize_size (when > 0) -> centre image_size crop; without resize_size an image larger than
image_size is centre-cropped and a smaller one resized. Resizing is bilinear (PIL on the host, jax.image on the
device); the two agree to within rounding for upsampling.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import queue
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ssdh_jax.data import sources
from ssdh_jax.data import splits as splits_lib
from ssdh_jax.data.sources import Examples

Batch = dict[str, np.ndarray]
_PREFETCH = 2  # batches computed ahead by a background thread


def _data_cfg(config: Any) -> Any:
  return config.data if hasattr(config, "data") else config


def _workers(d: Any) -> int:
  return sources.decode_workers(int(d.num_workers))


# ----------------------------------------------------------------------------------------------- validation


def validate_examples(
  examples: Examples,
  num_classes: int,
  *,
  name: str = "pool",
  on_bad_image: str = "error",
  num_workers: int = 0,
  cache_dir: str = "",
) -> tuple[Examples, list[dict[str, Any]]]:
  """The validation pass run before training: a bad input fails here, naming it, or is skipped and counted.

  Checks that the set is non-empty, labels are (N, num_classes) with values in {0, 1}, in-memory images are
  uint8 (N,H,W,3), and every image file exists and decodes completely (a truncated JPEG fails). With
  cache_dir, the per-file result is cached keyed by (path, size, mtime) of the whole list.

  Returns:
    the examples without the skipped rows, and the skipped-file records (on_bad_image == 'skip').
  """
  if len(examples) == 0:
    raise ValueError(f"split {name!r} is empty")
  if examples.labels.shape[1] != num_classes:
    raise ValueError(
      f"{name}: labels have width {examples.labels.shape[1]}, config.data.num_classes is {num_classes}"
    )
  if not np.all((examples.labels == 0) | (examples.labels == 1)):
    raise ValueError(f"{name}: labels must be multi-hot 0/1 vectors")
  if examples.in_memory:
    im = examples.images
    if im.dtype != np.uint8 or im.ndim != 4 or im.shape[-1] != 3:
      raise ValueError(f"{name}: images must be uint8 (N,H,W,3), got {im.dtype} {im.shape}")
    return examples, []

  paths = list(examples.images)
  cache_file = ""
  if cache_dir:
    key = sources._fingerprint("", paths)
    cache_file = os.path.join(cache_dir, f"validated-{key}.json")
  if cache_file and os.path.exists(cache_file):
    with open(cache_file) as f:
      reasons = json.load(f)
  else:
    with concurrent.futures.ThreadPoolExecutor(
      num_workers if num_workers > 0 else (os.cpu_count() or 1)
    ) as ex:
      reasons = list(ex.map(sources.check_image_file, paths, chunksize=64))
    if cache_file:
      os.makedirs(cache_dir, exist_ok=True)
      with open(cache_file, "w") as f:
        json.dump(reasons, f)
  skipped: list[dict[str, Any]] = []
  for p, r in zip(paths, reasons):
    if r is not None:
      sources._raise_or_record(sources.bad_file(p, r), on_bad_image, skipped)
  if skipped:
    keep = np.asarray([i for i, r in enumerate(reasons) if r is None], np.int64)
    examples = examples.subset(keep)
    if len(examples) == 0:
      raise ValueError(f"split {name!r} is empty after skipping {len(skipped)} bad files")
  return examples, skipped


# ----------------------------------------------------------------------------------------------- load_splits


def load_pool(config: Any) -> tuple[Examples, list[dict[str, Any]]]:
  """The whole dataset named by `config.data` (or a full config) as one `Examples` + skipped records.

  Fields read (all in configs/default.py): source, manual_dir, tfds_name, data_dir, num_classes,
  on_bad_image, cache_dir, list_files (comma-separated), arrays_path, in_memory, num_workers (0: all cores).
  """
  d = config.data if hasattr(config, "data") else config
  source = d.source
  on_bad, workers, in_memory = d.on_bad_image, int(d.num_workers), d.in_memory
  if source == "digits":
    return sources.digits(), []
  if source == "arrays":
    path = d.arrays_path
    if not path:
      raise ValueError("source='arrays' needs data.arrays_path (an .npz), or pass the pool to load_splits")
    return sources.load_npz(path), []
  if source == "folder":
    ex, skipped, _ = sources.image_folder(
      d.manual_dir, in_memory=in_memory, cache_dir=d.cache_dir, num_workers=workers, on_bad_image=on_bad
    )
    return ex, skipped
  if source == "list":
    return sources.list_files(
      d.manual_dir,
      d.list_files,
      num_classes=d.num_classes,
      in_memory="never" if in_memory == "auto" else in_memory,  # list datasets are large, variable-sized
      cache_dir=d.cache_dir,
      num_workers=workers,
      on_bad_image=on_bad,
    )
  if source == "tfds":
    from ssdh_jax.data import tfds_builders  # lazy: pulls in tensorflow_datasets

    return tfds_builders.tfds_examples(
      d.tfds_name,
      data_dir=d.data_dir,
      manual_dir=d.manual_dir,
      num_classes=d.num_classes,
      list_names=d.list_files,
      on_bad_image=on_bad,
    )
  raise ValueError(f"unknown data.source {source!r} (digits | arrays | folder | list | tfds)")


def load_splits(config: Any, workdir: str, pool: Examples | None = None) -> tuple[dict[str, Examples], dict]:
  """Loads the dataset, runs the validation pass, and returns the protocol's splits plus run metadata.

  Args:
    config: the full config (reads config.data).
    workdir: run directory; split files go to data.split_dir or <workdir>/splits.
    pool: an in-memory dataset to use instead of data.source (e.g. source='arrays' without arrays_path).

  Returns:
    splits: 'query', 'train_labeled', 'train_unlabeled', 'database', 'validation' -> Examples
      (train_unlabeled keeps its true labels for diagnostics; train_batches never passes them on).
    meta: protocol, split_seed, val_size, val_from, split_sha256 (per split), split_hash (combined), counts,
      pool_size, pool_fingerprint, expected_pool_size, expected_database_size, metric_r, source, split_dir,
      num_skipped and skipped (the first 100 skipped-file records; all of them in <split_dir>/skipped.json).
  """
  d = _data_cfg(config)
  on_bad = d.on_bad_image
  skipped: list[dict[str, Any]] = []
  if pool is None:
    pool, skipped = load_pool(d)
  protocol = splits_lib.get_protocol(
    d.protocol, num_classes=int(d.num_classes), multi_label=bool(d.multi_label)
  )
  if protocol.num_classes != d.num_classes:
    raise ValueError(
      f"protocol {protocol.name} has {protocol.num_classes} classes, data.num_classes={d.num_classes}"
    )
  pool, sk = validate_examples(
    pool,
    d.num_classes,
    name=f"{d.source} pool",
    on_bad_image=on_bad,
    num_workers=int(d.num_workers),
    cache_dir=d.cache_dir,
  )
  skipped += sk
  if pool.in_memory and int(d.resize_size) == 0 and min(pool.images.shape[1:3]) < int(d.image_size):
    h, w = pool.images.shape[1:3]
    raise ValueError(
      f"{d.source} pool: images are {h}x{w}, smaller than data.image_size={d.image_size}, and "
      f"data.resize_size=0 (training would pad them, evaluation would resize them): set data.resize_size to "
      f"resize them the same way for both, or data.image_size <= {min(h, w)}"
    )
  split_dir = d.split_dir or os.path.join(workdir, "splits")
  rows, record = splits_lib.get_splits(
    pool.labels,
    pool.ids,
    protocol,
    int(d.split_seed),
    origin=pool.origin,
    val_size=int(d.val_size),
    val_from=d.val_from,
    split_dir=split_dir,
  )
  out = {k: pool.subset(v) for k, v in rows.items()}
  for k in ("query", "train_labeled", "database"):
    if len(out[k]) == 0:
      raise ValueError(f"split {k!r} is empty (protocol {protocol.name}, pool of {len(pool)})")
  if skipped:
    os.makedirs(split_dir, exist_ok=True)
    with open(os.path.join(split_dir, "skipped.json"), "w") as f:
      json.dump(skipped, f, indent=1)
  meta = dict(record, source=d.source, split_dir=split_dir, num_skipped=len(skipped), skipped=skipped[:100])
  num_labeled = int(d.get("num_labeled", 0))  # absent from run folders saved before the field existed
  if num_labeled:
    out, meta["labeled_subset"] = fewer_labels(out, num_labeled, int(d.split_seed))
  return out, meta


def fewer_labels(
  splits: dict[str, Examples], num_labeled: int, seed: int
) -> tuple[dict[str, Examples], dict[str, Any]]:
  """Keeps `num_labeled` of splits['train_labeled'] labeled and appends the rest to 'train_unlabeled'.

  The kept rows are class-balanced (round-robin over classes, each class in one seeded order), so a smaller
  count's set is inside a larger one's and the queries, database and validation set are untouched: a
  label-scarce run is scored exactly like the protocol's. Multi-label rows count toward their first label.

  Returns:
    (the new splits, {'num_labeled', 'ids_sha256'} for the run's metadata).
  """
  lab = splits["train_labeled"]
  if num_labeled >= len(lab):
    raise ValueError(
      f"config.data.num_labeled: {num_labeled} is not below the protocol's {len(lab)} labeled images"
    )
  rng = np.random.default_rng([seed, 0x1AB])
  order = rng.permutation(len(lab))
  first_class = np.argmax(lab.labels[order] > 0.5, axis=1)
  # Rank of each row within its class (in the seeded order), then classes interleaved by that rank.
  rank = np.empty(len(order), np.int64)
  for c in np.unique(first_class):
    members = np.flatnonzero(first_class == c)
    rank[members] = np.arange(len(members))
  keep = np.sort(order[np.lexsort((first_class, rank))[:num_labeled]])
  rest = np.setdiff1d(np.arange(len(lab)), keep)
  unl = splits["train_unlabeled"]
  moved = lab.subset(rest)
  merged = Examples(
    np.concatenate([unl.images, moved.images]) if unl.in_memory else [*unl.images, *moved.images],
    np.concatenate([unl.labels, moved.labels]),
    np.concatenate([unl.ids, moved.ids]),
    None if unl.origin is None or moved.origin is None else np.concatenate([unl.origin, moved.origin]),
  )
  out = dict(splits, train_labeled=lab.subset(keep), train_unlabeled=merged)
  ids = np.ascontiguousarray(out["train_labeled"].ids, np.int64)
  return out, {"num_labeled": int(num_labeled), "ids_sha256": hashlib.sha256(ids.tobytes()).hexdigest()}


# ----------------------------------------------------------------------------------------------- host transforms


def _resize(img: np.ndarray, size: int) -> np.ndarray:
  from PIL import Image

  if img.shape[0] == size and img.shape[1] == size:
    return img
  return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))


def is_feature_array(examples: Examples) -> bool:
  """True when `examples` holds precomputed activations (float arrays from a cached frozen prefix), which
  go to the model as stored: no decode, resize, crop or augmentation."""
  return examples.in_memory and examples.images.dtype != np.uint8


def _crop_offsets(u: np.ndarray, extent: int, size: int) -> np.ndarray:
  """Offsets in [0, extent - size] from uniforms u in [0, 1) (the same u works for any image size)."""
  return np.minimum(np.floor(u * (extent - size + 1)).astype(np.int64), extent - size)


def _crop_flip_one(img: np.ndarray, size: int, uy: float, ux: float, flip: bool) -> np.ndarray:
  if img.shape[0] < size or img.shape[1] < size:
    img = _resize(img, size)
  y = int(_crop_offsets(np.asarray(uy), img.shape[0], size))
  x = int(_crop_offsets(np.asarray(ux), img.shape[1], size))
  out = img[y : y + size, x : x + size]
  return out[:, ::-1] if flip else out


def _crops_resized_box(d: Any) -> bool:
  """Whether training crops resample only the crop's box of the source image (`_resized_crop_flip_one`).
  A power-of-two resize makes the box coordinates exact binary fractions, so the box gives PIL's pixels bit
  for bit (other sizes can round a box edge differently: off by one in some pixels)."""
  resize = int(d.resize_size)
  return d.augment == "crop_flip" and resize >= int(d.image_size) and resize & (resize - 1) == 0


def _resized_crop_flip_one(img: np.ndarray, resize: int, size: int, u: np.ndarray) -> np.ndarray:
  """The `size` crop at (u[0], u[1]) of `img` resized to resize x resize, flipped when u[2] < 0.5, computed
  by resampling only the crop's box of the source (PIL's `box`), without computing the (resize² - size²)
  pixels that the crop throws away. Bit-identical to resizing the whole image and cropping when resize is a
  power of two (the only case `_augment_one` uses it for)."""
  from PIL import Image

  h, w = img.shape[:2]
  y = int(_crop_offsets(np.asarray(u[0]), resize, size))
  x = int(_crop_offsets(np.asarray(u[1]), resize, size))
  sy, sx = h / resize, w / resize
  box = (x * sx, y * sy, (x + size) * sx, (y + size) * sy)
  out = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR, box=box))
  return out[:, ::-1] if u[2] < 0.5 else out


def eval_transform_one(img: np.ndarray, config: Any) -> np.ndarray:
  """Deterministic evaluation view of one uint8 (H,W,3) image -> uint8 (S,S,3), S = data.image_size."""
  d = _data_cfg(config)
  size, resize = int(d.image_size), int(d.resize_size)
  if resize > 0:
    img = _resize(img, resize)
  elif img.shape[0] < size or img.shape[1] < size:
    return _resize(img, size)
  y, x = (img.shape[0] - size) // 2, (img.shape[1] - size) // 2
  return img[y : y + size, x : x + size]


def _source_image(examples: Examples, row: int, decode_size: int) -> np.ndarray:
  """Row `row` of `examples` as uint8 (H,W,3): the stored array, or the decoded file (resized when > 0)."""
  if examples.in_memory:
    return examples.images[row]
  return sources.decode_image(examples.images[row], decode_size)


def _fill(
  out: np.ndarray, fn: Callable[[int], np.ndarray], heavy: bool, executor: concurrent.futures.Executor | None
) -> np.ndarray:
  """out[i] = fn(i) for every row, on the thread pool when the per-row work is heavy (PIL decode/resize
  release the GIL); light work (slicing small arrays) stays on this thread."""

  def work(rows: range) -> None:
    for i in rows:
      out[i] = fn(i)

  n = len(out)
  if heavy and executor is not None and n > 1:
    list(executor.map(work, sources._chunks(n, 4 * getattr(executor, "_max_workers", 1))))
  else:
    work(range(n))
  return out


def _augment_one(img: np.ndarray, u: np.ndarray, d: Any) -> np.ndarray:
  """Random training view of one uint8 (H,W,3) image from 3 uniforms u (crop y, crop x, flip) -> (S,S,3)."""
  size, resize, mode = int(d.image_size), int(d.resize_size), d.augment
  if mode == "none":
    return eval_transform_one(img, d)
  if _crops_resized_box(d) and img.shape[:2] != (resize, resize):
    return _resized_crop_flip_one(img, resize, size, u)
  if resize > 0:
    img = _resize(img, resize)
  if mode == "crop_flip":
    return _crop_flip_one(img, size, u[0], u[1], bool(u[2] < 0.5))
  if mode != "pad_crop_flip":
    raise ValueError(f"data.augment must be none | crop_flip | pad_crop_flip, got {mode!r}")
  p = int(d.pad)
  h, w = img.shape[:2]
  if h + 2 * p < size or w + 2 * p < size:
    img = _resize(img, max(size - 2 * p, 1))
    h, w = img.shape[:2]
  # The crop of the zero-padded image, without materialising the padded image (np.pad is slow per row).
  y = int(_crop_offsets(np.asarray(u[0]), h + 2 * p, size)) - p
  x = int(_crop_offsets(np.asarray(u[1]), w + 2 * p, size)) - p
  out = np.zeros((size, size, 3), np.uint8)
  y0, y1, x0, x1 = max(y, 0), min(y + size, h), max(x, 0), min(x + size, w)
  if y1 > y0 and x1 > x0:
    out[y0 - y : y1 - y, x0 - x : x1 - x] = img[y0:y1, x0:x1]
  return out[:, ::-1] if u[2] < 0.5 else out


def _augment_batch(images: np.ndarray, u: np.ndarray, d: Any) -> np.ndarray | None:
  """`_augment_one` for a uint8 (B,H,W,3) batch needing no resize (one pad for the whole batch); None when
  the batch needs the per-row path."""
  size, resize, mode = int(d.image_size), int(d.resize_size), d.augment
  if mode not in ("crop_flip", "pad_crop_flip") or (resize > 0 and images.shape[1:3] != (resize, resize)):
    return None
  if mode == "pad_crop_flip":
    p = int(d.pad)
    images = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
  b, h, w = images.shape[:3]
  if h < size or w < size:
    return None
  ys = _crop_offsets(u[:, 0], h, size)
  xs = _crop_offsets(u[:, 1], w, size)
  flip = u[:, 2] < 0.5
  out = np.empty((b, size, size, 3), np.uint8)
  for i in range(b):  # host numpy: a slice copy per row beats one fancy-index gather (measured 3x)
    crop = images[i, ys[i] : ys[i] + size, xs[i] : xs[i] + size]
    out[i] = crop[:, ::-1] if flip[i] else crop
  return out


def host_augment(rng: np.random.Generator, images: np.ndarray | list[np.ndarray], config: Any) -> np.ndarray:
  """Random training view of a batch on the host -> uint8 (B,S,S,3) (see the module docstring).

  Args:
    rng: numpy Generator (seeded per step by the caller); draws (B, 3) uniforms: crop y, crop x, flip.
    images: uint8 (B,H,W,3) or a list of uint8 (H_i,W_i,3).
    config: config or config.data.
  """
  d = _data_cfg(config)
  u = rng.random((len(images), 3))
  if isinstance(images, np.ndarray):
    out = _augment_batch(images, u, d)
    if out is not None:
      return out
  out = np.empty((len(images), int(d.image_size), int(d.image_size), 3), np.uint8)
  return _fill(out, lambda i: _augment_one(images[i], u[i], d), False, None)


def eval_transform(images: np.ndarray | list[np.ndarray], config: Any) -> np.ndarray:
  """Evaluation view of a batch -> uint8 (B,S,S,3)."""
  return np.stack([eval_transform_one(im, config) for im in images])


def eval_images(images: np.ndarray | list[np.ndarray], config: Any) -> np.ndarray:
  """Evaluation view of user images (uint8 (H_i,W_i,3) each, any sizes) -> uint8 (B,S,S,3), resized to
  data.resize_size first when > 0 (the same view `eval_batches` gives database images)."""
  d = _data_cfg(config)
  resize = int(d.resize_size)
  return eval_transform([_resize(np.asarray(im, np.uint8), resize) if resize > 0 else im for im in images], d)


# ----------------------------------------------------------------------------------------------- device transforms


def device_augment(key: jax.Array, images: jax.Array, config: Any) -> jax.Array:
  """Random training view of a uint8 batch on the accelerator -> float32 (B,S,S,3) in [0, 255].

  The same transform as `host_augment` in jax.numpy (per-row crop offsets via vmap'd dynamic_slice, no Python
  loop over the batch). `config` (or config.data) is read at trace time: close over it before jit, e.g.
  `jax.jit(functools.partial(device_augment, config=config))`.

  Args:
    key: PRNG key for this batch.
    images: uint8 (B,H,W,3).
    config: config or config.data (augment, image_size, resize_size, pad).
  """
  d = _data_cfg(config)
  size, resize, mode = int(d.image_size), int(d.resize_size), d.augment
  if mode == "none":
    return device_eval_transform(images, d)
  x = images.astype(jnp.float32)
  b, h, w, c = x.shape
  if mode == "pad_crop_flip":
    p = int(d.pad)
    x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  elif mode == "crop_flip":
    if resize > 0 and (h, w) != (resize, resize):
      x = jax.image.resize(x, (b, resize, resize, c), "bilinear")
  else:
    raise ValueError(f"data.augment must be none | crop_flip | pad_crop_flip, got {mode!r}")
  if x.shape[1] < size or x.shape[2] < size:
    x = jax.image.resize(x, (b, max(size, x.shape[1]), max(size, x.shape[2]), c), "bilinear")
  ky, kx, kf = jax.random.split(key, 3)
  ys = jax.random.randint(ky, (b,), 0, x.shape[1] - size + 1)
  xs = jax.random.randint(kx, (b,), 0, x.shape[2] - size + 1)
  crop = jax.vmap(lambda im, y, xx: jax.lax.dynamic_slice(im, (y, xx, 0), (size, size, c)))(x, ys, xs)
  flip = jax.random.bernoulli(kf, 0.5, (b,))
  return jnp.where(flip[:, None, None, None], crop[:, :, ::-1], crop)


def device_eval_transform(images: jax.Array, config: Any) -> jax.Array:
  """`eval_transform` on the accelerator: uint8 (B,H,W,3) -> float32 (B,S,S,3) in [0, 255]."""
  d = _data_cfg(config)
  size, resize = int(d.image_size), int(d.resize_size)
  x = images.astype(jnp.float32)
  b, h, w, c = x.shape
  if resize > 0 and (h, w) != (resize, resize):
    x = jax.image.resize(x, (b, resize, resize, c), "bilinear")
  elif resize <= 0 and (h < size or w < size):
    return jax.image.resize(x, (b, size, size, c), "bilinear")
  y, xx = (x.shape[1] - size) // 2, (x.shape[2] - size) // 2
  return x[:, y : y + size, xx : xx + size]


# ----------------------------------------------------------------------------------------------- batches


def batch_composition(
  batch_size: int, labeled_fraction: float, include_unlabeled: bool, num_unlabeled: int
) -> tuple[int, int]:
  """(labeled rows, unlabeled rows) per batch."""
  if not include_unlabeled or num_unlabeled == 0:
    return batch_size, 0
  if batch_size < 2:
    raise ValueError("a batch mixing labeled and unlabeled rows needs batch_size >= 2")
  n_lab = min(max(round(batch_size * labeled_fraction), 1), batch_size - 1)
  return n_lab, batch_size - n_lab


def _seed(seed: int) -> int:
  return int(seed) & (2**63 - 1)


def stream_rows(
  seed: int, stream: int, pool_size: int, start: int, count: int, cache: dict | None = None
) -> np.ndarray:
  """Rows at positions [start, start + count) of an endless stream of seeded permutations of range(pool_size).

  Epoch e of stream `stream` is `default_rng([seed, stream, e]).permutation(pool_size)`. `cache` (optional,
  owned by the caller) memoises recent permutations.
  """
  out = np.empty(count, np.int64)
  filled, pos = 0, start
  while filled < count:
    epoch, off = divmod(pos, pool_size)
    perm = None if cache is None else cache.get((stream, epoch))
    if perm is None:
      perm = np.random.default_rng([_seed(seed), stream, epoch]).permutation(pool_size)
      if cache is not None:
        if len(cache) >= 4:
          cache.pop(next(iter(cache)))
        cache[(stream, epoch)] = perm
    take = min(pool_size - off, count - filled)
    out[filled : filled + take] = perm[off : off + take]
    filled += take
    pos += take
  return out


def train_batch(
  splits: Mapping[str, Examples],
  config: Any,
  seed: int,
  step: int,
  *,
  executor: concurrent.futures.Executor | None = None,
  cache: dict | None = None,
  rows: tuple[int, int] | None = None,
) -> Batch:
  """The training batch of step `step`: a pure function of (splits, config, seed, step).

  rows: (lo, hi) → only global rows lo … hi − 1 are materialised (a process's share on a multi-host run):
  equal to the full batch's rows lo:hi, at (hi − lo)/B of the decode and augmentation work.
  """
  d = config.data
  bsz = int(config.train.batch_size)
  lo, hi = rows if rows is not None else (0, bsz)
  if not 0 <= lo < hi <= bsz:
    raise ValueError(f"rows {rows} are not a slice of the global batch of {bsz}")
  lab, unl = splits["train_labeled"], splits["train_unlabeled"]
  if len(lab) == 0:
    raise ValueError("split 'train_labeled' is empty")
  n_lab, n_unl = batch_composition(bsz, float(d.labeled_fraction), bool(d.include_unlabeled), len(unl))
  lab_rows = stream_rows(seed, 0, len(lab), step * n_lab, n_lab, cache)
  unl_rows = stream_rows(seed, 1, len(unl), step * n_unl, n_unl, cache) if n_unl else np.zeros(0, np.int64)
  rng = np.random.default_rng([_seed(seed), 2, int(step)])
  order = rng.permutation(bsz)  # mixes labeled and unlabeled rows across the device shards
  u = rng.random((bsz, 3))  # per output row: crop y, crop x, flip
  # Drawn for the whole batch (so every share agrees), then cut to the rows this caller materialises.
  order, u, m = order[lo:hi], u[lo:hi], hi - lo
  # Output row i holds source k = order[i] of (labeled rows ++ unlabeled rows).
  src_ex = [lab] * n_lab + [unl] * n_unl
  src_row = np.concatenate([lab_rows, unl_rows])[order]
  src_ex = [src_ex[k] for k in order]
  from_lab = order < n_lab

  resize, size = int(d.resize_size), int(d.image_size)
  files = not (lab.in_memory and (n_unl == 0 or unl.in_memory))
  gathered = None
  if is_feature_array(lab) or (not files and not d.on_device_augment):
    gathered = _gather_rows(lab, unl, src_row, from_lab)
  if is_feature_array(lab):
    out = gathered
  elif d.on_device_augment:
    # Arrays go as stored (the device resizes); files are decoded at one size so that they stack.
    if files:
      common = resize or size
      out = np.empty((m, common, common, 3), np.uint8)
      _fill(out, lambda i: _source_image(src_ex[i], src_row[i], common), True, executor)
    else:
      if n_unl and lab.images.shape[1:] != unl.images.shape[1:]:
        raise ValueError("on-device augmentation needs same-sized images (set data.resize_size)")
      out = np.empty((m, *lab.images.shape[1:]), np.uint8)
      _fill(out, lambda i: src_ex[i].images[src_row[i]], False, None)
  else:
    heavy = files or (resize > 0 and lab.images.shape[1:3] != (resize, resize))
    out = None
    if not files and gathered is not None:
      out = _augment_batch(gathered, u, d)
    if out is None:
      out = np.empty((m, size, size, 3), np.uint8)
      # Files are decoded at their own size when the crop's box is resampled from them directly.
      decode_size = 0 if _crops_resized_box(d) else resize
      fn = lambda i: _augment_one(_source_image(src_ex[i], src_row[i], decode_size), u[i], d)
      _fill(out, fn, heavy, executor)

  labels = np.concatenate([lab.labels[lab_rows], np.zeros((n_unl, lab.labels.shape[1]), np.float32)])
  ids = np.concatenate([lab.ids[lab_rows], unl.ids[unl_rows] if n_unl else np.zeros(0, np.int64)])
  return {
    "image": out,
    "labels": labels[order].astype(np.float32),
    "labeled": from_lab,
    "id": ids[order].astype(np.int64),
  }


def _gather_rows(
  lab: Examples, unl: Examples, src_row: np.ndarray, from_lab: np.ndarray
) -> np.ndarray | None:
  """Stored arrays of the selected rows, in output order (None: labeled and unlabeled arrays differ in
  shape, so they cannot share one array)."""
  if not from_lab.all() and lab.images.shape[1:] != unl.images.shape[1:]:
    return None
  out = np.empty((len(src_row), *lab.images.shape[1:]), lab.images.dtype)
  out[from_lab] = lab.images[src_row[from_lab]]
  if not from_lab.all():
    out[~from_lab] = unl.images[src_row[~from_lab]]
  return out


def _prefetch(make: Callable[[int], Batch], start: int, depth: int) -> Iterator[Batch]:
  """Yields make(start), make(start + 1), ... computed `depth` ahead on a background thread."""
  q: queue.Queue = queue.Queue(maxsize=depth)
  stop = threading.Event()

  def produce():
    step = start
    while not stop.is_set():
      try:
        item: Any = make(step)
      except BaseException as e:  # handed to the consumer, which re-raises it
        item = e
      while not stop.is_set():
        try:
          q.put(item, timeout=0.1)
          break
        except queue.Full:
          continue
      if isinstance(item, BaseException):
        return
      step += 1

  t = threading.Thread(target=produce, daemon=True)
  t.start()
  try:
    while True:
      item = q.get()
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
    t.join(timeout=5)


def train_batches(
  splits: Mapping[str, Examples],
  config: Any,
  seed: int,
  start_step: int = 0,
  *,
  rows: tuple[int, int] | None = None,
) -> Iterator[Batch]:
  """Endless training batches for steps start_step, start_step + 1, ... (see the module docstring).

  Args:
    splits: the output of `load_splits` (uses 'train_labeled' and 'train_unlabeled').
    config: the full config (data.*, train.batch_size).
    seed: batch-order seed (the trainer passes config.seed).
    start_step: first step (resume).
    rows: (lo, hi): only those rows of each global batch (this process's share; `train_batch`).

  Yields:
    dict(image uint8 (B,S,S,3) [un-augmented when data.on_device_augment], labels float32 (B,C),
    labeled bool (B,), id int64 (B,)).
  """
  executor = concurrent.futures.ThreadPoolExecutor(_workers(config.data))
  cache: dict = {}

  def make(step: int) -> Batch:
    return train_batch(splits, config, seed, step, executor=executor, cache=cache, rows=rows)

  try:
    yield from _prefetch(make, int(start_step), _PREFETCH)
  finally:
    executor.shutdown(wait=False, cancel_futures=True)


def eval_batches(examples: Examples, config: Any, batch_size: int, *, pad: bool = False) -> Iterator[Batch]:
  """Evaluation batches in row order: dict(image uint8 (b,S,S,3) centre view, labels float32 (b,C),
  id int64 (b,), mask bool (b,)).

  The last batch is shorter, or with pad=True padded to batch_size with zero rows, id -1 and mask False.
  """
  d = _data_cfg(config)
  resize, size = int(d.resize_size), int(d.image_size)
  heavy = not examples.in_memory or (resize > 0 and examples.images.shape[1:3] != (resize, resize))
  with concurrent.futures.ThreadPoolExecutor(_workers(d)) as executor:
    n = len(examples)
    for start in range(0, n, batch_size):
      rows = np.arange(start, min(n, start + batch_size))
      if is_feature_array(examples):
        out = examples.images[start : start + len(rows)]
      else:
        out = np.empty((len(rows), size, size, 3), np.uint8)
        _fill(
          out,
          lambda i, rows=rows: eval_transform_one(_source_image(examples, rows[i], resize), d),
          heavy,
          executor,
        )
      batch = {
        "image": out,
        "labels": examples.labels[rows].astype(np.float32),
        "id": examples.ids[rows].astype(np.int64),
        "mask": np.ones(len(rows), bool),
      }
      if pad and len(rows) < batch_size:
        extra = batch_size - len(rows)
        fill = {"image": 0, "labels": 0, "id": -1, "mask": False}
        batch = {
          k: np.concatenate([v, np.full((extra, *v.shape[1:]), fill[k], v.dtype)]) for k, v in batch.items()
        }
      yield batch


def shard(batch: Mapping[str, Any], n_devices: int) -> dict[str, Any]:
  """Reshapes every (B, ...) array to (n_devices, B // n_devices, ...) for pmap (B must divide evenly)."""
  out = {}
  for k, v in batch.items():
    if v.shape[0] % n_devices:
      raise ValueError(f"batch[{k!r}] has {v.shape[0]} rows, not divisible by {n_devices} devices")
    out[k] = v.reshape(n_devices, v.shape[0] // n_devices, *v.shape[1:])
  return out
