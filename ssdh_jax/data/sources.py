"""Data sources: each one returns the whole pool of a dataset as one `Examples`.

Every source yields, per image, a uint8 HWC RGB image (in memory or a file path decoded lazily), a float32
multi-hot label vector and a stable int64 id. `config.data.source` picks one:

  digits  scikit-learn's bundled 8x8 digits (1,797 images), grey 0..16 scaled to 0..255 and repeated to RGB.
  arrays  in-memory NumPy arrays (`from_arrays`, or an .npz at `data.arrays_path`); no TensorFlow needed.
  folder  an image folder `manual_dir/<split>/<class>/*.jpg` read with PIL (the layout of the shared
          CIFAR-10 archive); `origin` holds `<split>`.
  list    list files `manual_dir/*.txt` (or `data.list_files`), one image per line: `relpath 0 1 0 ...`
          (NUS-WIDE, MIRFlickr-25k, COCO, ImageNet-100 as the hashing field ships them); `origin` holds the
          list file's stem.
  tfds    a tfds catalogue dataset (`data.tfds_name`, e.g. `cifar10`), or the project's own builders
          `ssdh_image_folder` / `ssdh_list_file` over `manual_dir`: `tfds_builders.tfds_examples`, the one
          module that imports TensorFlow (this one never does; `pipeline.load_pool` dispatches).

Ids are stable: the row index in sorted relative-path order for folders and lists (the same ids whether read
with PIL or through the tfds builders), the load order for digits, and (split name, tfds `id` feature) order
for tfds catalogue datasets.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# Project builders reachable through source=tfds (everything else is looked up in the tfds catalogue).
OWN_TFDS_BUILDERS = ("ssdh_image_folder", "ssdh_list_file")
# Decode a file-backed dataset into one uint8 array when it is at most this big (CIFAR-10: 184 MB).
DEFAULT_MAX_IN_MEMORY_BYTES = 4 << 30


@dataclasses.dataclass(frozen=True)
class Examples:
  """A set of images with labels and ids.

  Attributes:
    images: uint8 (N,H,W,3) RGB array, or a sequence of N image file paths (decoded lazily).
    labels: float32 (N,C) multi-hot (one-hot for single-label data).
    ids: int64 (N,) stable ids, unique within a dataset.
    origin: optional (N,) str array: the source split each row came from (image-folder `<split>` folder,
      list-file stem, tfds split). Protocols with an official split (cifar10-2) read it.
  """

  images: Any
  labels: np.ndarray
  ids: np.ndarray
  origin: np.ndarray | None = None

  def __post_init__(self):
    n = len(self.ids)
    if len(self.images) != n or len(self.labels) != n or (self.origin is not None and len(self.origin) != n):
      raise ValueError(
        f"Examples: images ({len(self.images)}), labels ({len(self.labels)}), ids ({n}) and origin "
        f"({None if self.origin is None else len(self.origin)}) must have the same length"
      )
    if self.labels.ndim != 2:
      raise ValueError(f"Examples: labels must be (N,C), got shape {self.labels.shape}")

  def __len__(self) -> int:
    return len(self.ids)

  @property
  def in_memory(self) -> bool:
    return isinstance(self.images, np.ndarray)

  @property
  def num_classes(self) -> int:
    return int(self.labels.shape[1])

  def subset(self, rows: np.ndarray) -> Examples:
    """The rows `rows` (int indices into this set), in that order."""
    rows = np.asarray(rows, dtype=np.int64)
    images = self.images[rows] if self.in_memory else [self.images[i] for i in rows]
    origin = None if self.origin is None else self.origin[rows]
    return Examples(images, self.labels[rows], self.ids[rows], origin)


def bad_file(file: str, reason: str, line: int | None = None) -> dict[str, Any]:
  """A record of one bad input (JSON-ready; goes into the run metadata when skipped)."""
  rec: dict[str, Any] = {"file": str(file), "reason": reason}
  if line is not None:
    rec["line"] = int(line)
  return rec


def format_bad(rec: dict[str, Any]) -> str:
  where = rec["file"] + (f":{rec['line']}" if "line" in rec else "")
  return f"{where}: {rec['reason']}"


def _raise_or_record(rec: dict[str, Any], on_bad: str, skipped: list[dict[str, Any]]) -> None:
  if on_bad == "skip":
    skipped.append(rec)
  elif on_bad == "error":
    raise ValueError(
      f"bad input {format_bad(rec)} (set config.data.on_bad_image='skip' to skip and count such files)"
    )
  else:
    raise ValueError(f"on_bad_image must be 'error' or 'skip', got {on_bad!r}")


# ----------------------------------------------------------------------------------------------- arrays


def from_arrays(
  images: np.ndarray,
  labels: np.ndarray,
  ids: np.ndarray | None = None,
  origin: np.ndarray | None = None,
  num_classes: int | None = None,
) -> Examples:
  """In-memory arrays as `Examples`.

  Args:
    images: uint8 (N,H,W,3), or (N,H,W) / (N,H,W,1) grey (repeated to RGB).
    labels: (N,C) multi-hot, or (N,) int class indices (one-hot encoded with `num_classes`).
    ids: (N,) ints (default: 0..N-1).
    origin: optional (N,) str source-split names.
    num_classes: width of the one-hot code for int labels (default: max label + 1).
  """
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise ValueError(f"images must be uint8, got {images.dtype}")
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"images must be (N,H,W,3), got {images.shape}")
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  labels = np.asarray(labels)
  if labels.ndim == 1:
    labels = one_hot(labels, num_classes or int(labels.max()) + 1)
  ids = np.arange(len(images), dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
  if len(np.unique(ids)) != len(ids):
    raise ValueError("ids must be unique")
  origin = None if origin is None else np.asarray(origin).astype(str)
  return Examples(images, labels.astype(np.float32), ids, origin)


def one_hot(classes: np.ndarray, num_classes: int) -> np.ndarray:
  """int (N,) -> float32 (N,num_classes)."""
  classes = np.asarray(classes, dtype=np.int64)
  if classes.size and (classes.min() < 0 or classes.max() >= num_classes):
    raise ValueError(f"class index out of range [0, {num_classes})")
  return np.eye(num_classes, dtype=np.float32)[classes]


def load_npz(path: str) -> Examples:
  """An .npz with `images` uint8 (N,H,W,3), `labels` (N,C) or (N,), optional `ids`, `origin`."""
  with np.load(path, allow_pickle=False) as z:
    return from_arrays(
      z["images"],
      z["labels"],
      z["ids"] if "ids" in z else None,
      z["origin"] if "origin" in z else None,
    )


def digits() -> Examples:
  """scikit-learn's 8x8 digits: uint8 (1797,8,8,3) RGB, one-hot (1797,10), ids 0..1796 (load order)."""
  from sklearn.datasets import load_digits  # sklearn ships the data; no download

  d = load_digits()
  grey = np.clip(np.round(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)  # 0..16 -> 0..255
  return from_arrays(np.repeat(grey[..., None], 3, axis=-1), one_hot(d.target, 10))


# ----------------------------------------------------------------------------------------------- images


def decode_image(path: str, size: int = 0) -> np.ndarray:
  """Decodes one image file to uint8 (H,W,3) RGB; `size` > 0 resizes (bilinear) to (size,size)."""
  from PIL import Image

  with Image.open(path) as im:
    if im.mode != "RGB":
      im = im.convert("RGB")
    if size and im.size != (size, size):
      im = im.resize((size, size), Image.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


def check_image_file(path: str) -> str | None:
  """None when `path` is a readable image; otherwise why not (missing, corrupt, truncated, ...).

  Decodes the whole entropy-coded stream (a truncated JPEG is caught) at 1/8 scale via libjpeg's DCT scaling,
  which is several times cheaper than a full decode.
  """
  from PIL import Image

  if not os.path.isfile(path):
    return "file does not exist"
  try:
    with Image.open(path) as im:
      im.draft("RGB", (max(1, im.size[0] // 8), max(1, im.size[1] // 8)))
      im.load()
  except Exception as e:  # PIL raises several types (OSError, SyntaxError, ValueError, ...)
    return f"cannot decode image ({type(e).__name__}: {e})"
  return None


def _probe_size(path: str) -> tuple[int, int] | str:
  """(H, W) from the header, or why the file cannot be opened."""
  from PIL import Image

  if not os.path.isfile(path):
    return "file does not exist"
  try:
    with Image.open(path) as im:
      return im.size[1], im.size[0]
  except Exception as e:
    return f"cannot open image ({type(e).__name__}: {e})"


def decode_workers(num_workers: int) -> int:
  """Threads for decoding and augmenting: data.num_workers, or every core when it is 0."""
  return num_workers if num_workers > 0 else max(1, os.cpu_count() or 1)


def _chunks(n: int, parts: int) -> list[range]:
  step = max(1, -(-n // max(1, parts)))
  return [range(i, min(n, i + step)) for i in range(0, n, step)]


class _SizeMismatch(Exception):
  pass


def decode_images(
  paths: Sequence[str], shape: tuple[int, int] | None = None, num_workers: int = 0, stop_on_size: bool = False
) -> tuple[np.ndarray | None, list[tuple[int, str]]]:
  """Decodes same-sized images into one uint8 (N,H,W,3) array with a thread pool (PIL releases the GIL).

  Args:
    paths: N image files.
    shape: (H, W) expected (None: the first decodable file's size).
    num_workers: decoding threads (0: all cores).
    stop_on_size: return (None, bad) as soon as one file has another size (the caller keeps paths instead).

  Returns:
    the array (rows of bad files left zero) and a sorted list of (row, reason) for files that failed to
    decode or had another size.
  """
  if shape is None:
    for p in paths:
      if check_image_file(p) is None:
        shape = decode_image(p).shape[:2]
        break
    else:
      return np.zeros((0, 0, 0, 3), np.uint8), [(i, check_image_file(p) or "") for i, p in enumerate(paths)]
  out = np.zeros((len(paths), shape[0], shape[1], 3), np.uint8)
  stop = threading.Event()

  def work(rows: range) -> list[tuple[int, str]]:
    bad = []
    for i in rows:
      if stop.is_set():
        break
      try:
        img = decode_image(paths[i])
      except Exception as e:
        bad.append((i, check_image_file(paths[i]) or f"cannot decode image ({type(e).__name__}: {e})"))
        continue
      if img.shape[:2] != tuple(shape):
        if stop_on_size:
          stop.set()
          raise _SizeMismatch()
        bad.append((i, f"image is {img.shape[0]}x{img.shape[1]}, expected {shape[0]}x{shape[1]}"))
        continue
      out[i] = img
    return bad

  nw = decode_workers(num_workers)
  # Many small chunks keep every thread busy; each chunk is a sequential run of files (cache-friendly).
  chunks = _chunks(len(paths), nw * 16)
  from tqdm.auto import tqdm

  # disable=None: a bar on a terminal only (decoding a large folder takes minutes), silent in logs and tests.
  bar = tqdm(total=len(paths), desc="decode", unit="img", dynamic_ncols=True, disable=None, leave=False)
  try:
    with concurrent.futures.ThreadPoolExecutor(nw) as pool:
      bad = []
      for rows, part in zip(chunks, pool.map(work, chunks)):
        bad += part
        bar.update(len(rows))
  except _SizeMismatch:
    return None, []
  finally:
    bar.close()
  return out, sorted(bad)


def _fingerprint(root: str, relpaths: Sequence[str]) -> str:
  """sha256 over the file list with sizes and mtimes: changes when any file is added, removed or edited."""
  h = hashlib.sha256(os.path.abspath(root).encode())
  for rel in relpaths:
    try:
      st = os.stat(os.path.join(root, rel))
      h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    except OSError:
      h.update(f"{rel}\0missing\n".encode())
  return h.hexdigest()


def materialize(
  root: str,
  relpaths: Sequence[str],
  *,
  in_memory: str = "auto",
  cache_dir: str = "",
  num_workers: int = 0,
  on_bad_image: str = "error",
  max_bytes: int = DEFAULT_MAX_IN_MEMORY_BYTES,
) -> tuple[np.ndarray | list[str], np.ndarray, list[dict[str, Any]]]:
  """Reads the files `root/relpaths` into a uint8 array when that is possible and allowed, else keeps paths.

  `in_memory`: 'auto' decodes when N*H*W*3 <= max_bytes (H, W: the first file's size) and every file has that
  size (else it keeps paths); 'always' decodes and treats a file of another size as a bad file; 'never' keeps
  paths (files are then checked by `pipeline.validate_examples`). With `cache_dir` the decoded
  array is cached as `<cache_dir>/<fingerprint>.npy` (fingerprint: root, file list, sizes, mtimes).

  Returns:
    images: uint8 (M,H,W,3) or list of M absolute paths; keep: int64 (M,) rows of `relpaths` kept;
    skipped: bad-file records (empty unless on_bad_image == 'skip'; 'error' raises on the first bad file).
  """
  if in_memory not in ("auto", "always", "never"):
    raise ValueError(f"data.in_memory must be auto | always | never, got {in_memory!r}")
  paths = [os.path.join(root, r) for r in relpaths]
  all_rows = np.arange(len(paths), dtype=np.int64)
  if in_memory == "never" or not paths:
    return paths, all_rows, []

  fp = _fingerprint(root, relpaths) if cache_dir else ""
  if cache_dir:
    cached = os.path.join(cache_dir, f"{fp}.npy")
    cached_meta = os.path.join(cache_dir, f"{fp}.json")
    if os.path.exists(cached) and os.path.exists(cached_meta):
      with open(cached_meta) as f:
        m = json.load(f)
      if m.get("on_bad_image") == on_bad_image:
        return np.load(cached), np.asarray(m["keep"], np.int64), m["skipped"]

  # No header pass: decode at the first file's size and fall back to paths when another size turns up.
  first = _probe_size(paths[0]) if len(paths) else None
  if isinstance(first, tuple) and len(paths) * first[0] * first[1] * 3 > max_bytes:
    if in_memory == "always":
      raise ValueError(
        f"data.in_memory='always' but the images under {root} exceed {max_bytes} bytes decoded"
      )
    return paths, all_rows, []
  images, bad = decode_images(paths, None, num_workers, stop_on_size=in_memory == "auto")
  if images is None:
    return paths, all_rows, []  # several sizes: keep files; pipeline.validate_examples checks them
  skipped: list[dict[str, Any]] = []
  for j, reason in bad:
    _raise_or_record(bad_file(paths[j], reason), on_bad_image, skipped)
  good = np.setdiff1d(all_rows, np.asarray([j for j, _ in bad], np.int64))
  if bad:
    images = images[good]
  keep = good.astype(np.int64)
  if cache_dir:
    os.makedirs(cache_dir, exist_ok=True)
    tmp = os.path.join(cache_dir, f"{fp}.tmp-{os.getpid()}.npy")  # unique: every process of a run decodes
    np.save(tmp, images)
    os.replace(tmp, os.path.join(cache_dir, f"{fp}.npy"))
    with open(os.path.join(cache_dir, f"{fp}.json"), "w") as f:
      json.dump({"keep": keep.tolist(), "skipped": skipped, "on_bad_image": on_bad_image}, f)
  return images, keep, skipped


# ----------------------------------------------------------------------------------------------- folders


def scan_image_folder(root: str) -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
  """Scans `root/<split>/<class>/<image>` (files with IMAGE_EXTENSIONS, case-insensitive).

  Returns:
    relpaths: sorted list of N `split/class/file` paths (row i has id i);
    labels: float32 (N,C) one-hot over `class_names`;
    class_names: sorted union of the class folder names of all splits (C of them);
    origin: (N,) str split folder of each row.
  """
  if not os.path.isdir(root):
    raise ValueError(f"image folder {root!r} does not exist")
  entries = []  # (relpath, split, class)
  for split in sorted(os.listdir(root)):
    sdir = os.path.join(root, split)
    if not os.path.isdir(sdir):
      continue
    for cls in sorted(os.listdir(sdir)):
      cdir = os.path.join(sdir, cls)
      if not os.path.isdir(cdir):
        continue
      for name in os.listdir(cdir):
        if name.lower().endswith(IMAGE_EXTENSIONS):
          entries.append((f"{split}/{cls}/{name}", split, cls))
  if not entries:
    raise ValueError(f"image folder {root!r} holds no <split>/<class>/*.jpg images")
  entries.sort()
  class_names = sorted({c for _, _, c in entries})
  index = {c: i for i, c in enumerate(class_names)}
  labels = one_hot(np.asarray([index[c] for _, _, c in entries]), len(class_names))
  origin = np.asarray([s for _, s, _ in entries])
  return [e[0] for e in entries], labels, class_names, origin


def image_folder(
  root: str,
  *,
  in_memory: str = "auto",
  cache_dir: str = "",
  num_workers: int = 0,
  on_bad_image: str = "error",
) -> tuple[Examples, list[dict[str, Any]], list[str]]:
  """An image folder `root/<split>/<class>/*.jpg` as `Examples` (see `materialize` for the decode rule).

  Returns (examples, skipped bad-file records, class names). Ids are the rows of the sorted path list, so
  skipping a bad file leaves the other ids unchanged.
  """
  relpaths, labels, class_names, origin = scan_image_folder(root)
  images, keep, skipped = materialize(
    root,
    relpaths,
    in_memory=in_memory,
    cache_dir=cache_dir,
    num_workers=num_workers,
    on_bad_image=on_bad_image,
  )
  return Examples(images, labels[keep], keep.astype(np.int64), origin[keep]), skipped, class_names


# ----------------------------------------------------------------------------------------------- lists


def parse_list_file(
  path: str, num_classes: int | None = None, on_bad_image: str = "error"
) -> tuple[list[str], np.ndarray, list[dict[str, Any]]]:
  """Parses a list file: one image per line, `relative/path.jpg 0 1 0 ...` (blank lines ignored).

  Args:
    path: the list file.
    num_classes: expected label width (None: the first line's width).
    on_bad_image: 'error' raises on a malformed line naming file and line; 'skip' skips and records it.

  Returns:
    relpaths (as written), labels float32 (M,C) with values in {0,1}, skipped records.
  """
  relpaths, rows, skipped = [], [], []
  with open(path) as f:
    for lineno, line in enumerate(f, 1):
      tokens = line.split()
      if not tokens:
        continue
      rel, values = tokens[0], tokens[1:]
      if num_classes is None:
        num_classes = len(values)
      reason = None
      if len(values) != num_classes:
        reason = f"expected {num_classes} labels, got {len(values)}"
      else:
        try:
          vec = np.asarray([float(v) for v in values], np.float32)
          if not np.all((vec == 0) | (vec == 1)):
            reason = "labels must be 0 or 1"
        except ValueError:
          reason = "labels must be numbers"
      if reason is not None:
        _raise_or_record(bad_file(path, reason, lineno), on_bad_image, skipped)
        continue
      relpaths.append(rel)
      rows.append(vec)
  labels = np.stack(rows) if rows else np.zeros((0, num_classes or 0), np.float32)
  return relpaths, labels, skipped


def find_list_files(root: str, names: Sequence[str] | str = ()) -> list[str]:
  """The list files to read: `names` (comma-separated or a sequence, relative to root), else root/*.txt."""
  if isinstance(names, str):
    names = [n.strip() for n in names.split(",") if n.strip()]
  if names:
    files = [os.path.join(root, n) for n in names]
  elif os.path.isdir(root):
    files = sorted(os.path.join(root, n) for n in os.listdir(root) if n.endswith(".txt"))
  else:
    raise ValueError(f"list-file root {root!r} does not exist")
  if not files:
    raise ValueError(f"no list files (*.txt) in {root!r}")
  for p in files:
    if not os.path.isfile(p):
      raise ValueError(f"list file {p!r} does not exist")
  return files


def scan_list_files(
  root: str,
  names: Sequence[str] | str = (),
  num_classes: int | None = None,
  on_bad_image: str = "error",
) -> tuple[list[str], np.ndarray, np.ndarray, list[dict[str, Any]]]:
  """Reads list files and merges them into one pool.

  A path listed in several files is kept once (origin: the first file in sorted order); listing it with
  different labels is an error. Rows are sorted by path, and the row index is the id.

  Returns:
    relpaths (sorted, unique), labels float32 (N,C), origin (N,) list-file stems, skipped records.
  """
  files = find_list_files(root, names)
  merged: dict[str, tuple[np.ndarray, str]] = {}
  skipped: list[dict[str, Any]] = []
  for path in files:
    stem = os.path.splitext(os.path.basename(path))[0]
    rels, labels, sk = parse_list_file(path, num_classes, on_bad_image)
    skipped += sk
    if num_classes is None and rels:
      num_classes = labels.shape[1]
    for rel, lab in zip(rels, labels):
      if rel in merged:
        if not np.array_equal(merged[rel][0], lab):
          raise ValueError(f"{path}: {rel} is listed with different labels in {merged[rel][1]}.txt")
        continue
      merged[rel] = (lab, stem)
  if not merged:
    raise ValueError(f"the list files {files} hold no images")
  relpaths = sorted(merged)
  labels = np.stack([merged[r][0] for r in relpaths]).astype(np.float32)
  origin = np.asarray([merged[r][1] for r in relpaths])
  return relpaths, labels, origin, skipped


def list_files(
  root: str,
  names: Sequence[str] | str = (),
  *,
  num_classes: int | None = None,
  in_memory: str = "never",
  cache_dir: str = "",
  num_workers: int = 0,
  on_bad_image: str = "error",
) -> tuple[Examples, list[dict[str, Any]]]:
  """List-file datasets as `Examples`; paths are relative to `root` (the images usually stay on disk)."""
  relpaths, labels, origin, skipped = scan_list_files(root, names, num_classes, on_bad_image)
  images, keep, sk = materialize(
    root,
    relpaths,
    in_memory=in_memory,
    cache_dir=cache_dir,
    num_workers=num_workers,
    on_bad_image=on_bad_image,
  )
  return Examples(images, labels[keep], keep, origin[keep]), skipped + sk
