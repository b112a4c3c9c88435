"""The project's tfds builders for retrieval datasets users bring as files, and the tfds readers.

This module imports tensorflow_datasets at import time; only `pipeline.load_pool` imports it, lazily.

Builders (registered under these names when this module is imported), both reading `manual_dir`:
  ssdh_image_folder  `<manual_dir>/<split>/<class>/*.jpg`; one tfds split per `<split>` folder.
  ssdh_list_file     `<manual_dir>/*.txt` list files, `relpath 0 1 0 ...` per line; one tfds split per file.
Features: image (uint8 HWC RGB), label float32 (C,) multi-hot, id int64 (the same ids as the PIL readers in
sources.py: row index in sorted relative-path order), path (relative to manual_dir).

Every image is fully checked while the dataset is generated, so a corrupt or missing file fails the build
with its name (or is skipped and counted with on_bad_image='skip'); nothing fails later while reading.
The builder config name is a hash of manual_dir's file list (and the options), so changed data gets a new
build instead of a stale one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from ssdh_jax.data import sources

VERSION = tfds.core.Version("1.0.0")


@dataclasses.dataclass(eq=False)
class RetrievalConfig(tfds.core.BuilderConfig):
  """What the builder needs to know before it reads manual_dir (tfds asks for features in `_info`)."""

  kind: str = "folder"  # folder | list
  num_labels: int = 0
  class_names: tuple[str, ...] = ()
  list_names: tuple[str, ...] = ()
  image_shape: tuple[Any, ...] = (None, None, 3)
  on_bad_image: str = "error"


def _features(c: RetrievalConfig) -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict(
    {
      "image": tfds.features.Image(shape=tuple(c.image_shape)),
      "label": tfds.features.Tensor(shape=(c.num_labels,), dtype=np.float32),
      "id": np.int64,
      "path": tfds.features.Text(),
    }
  )


def _passthrough(path: str) -> bool:
  """True when TensorFlow decodes the file's own bytes to the same RGB image PIL gives (no re-encoding)."""
  from PIL import Image

  with Image.open(path) as im:
    return im.format in ("JPEG", "PNG", "BMP") and im.mode in ("RGB", "L")


def _generate(root: str, relpaths: Sequence[str], labels: np.ndarray, rows: np.ndarray, c: RetrievalConfig):
  """(key, example) for `rows`, each image fully checked first."""
  for i in rows:
    path = os.path.join(root, relpaths[i])
    reason = sources.check_image_file(path)
    if reason is None and c.image_shape[0] is not None:
      size = sources._probe_size(path)
      if size != tuple(c.image_shape[:2]):
        reason = f"image is {size}, expected {tuple(c.image_shape[:2])}"
    if reason is not None:
      if c.on_bad_image == "skip":
        continue  # counted by load_own (scanned ids minus built ids)
      raise ValueError(f"bad input {path}: {reason} (set config.data.on_bad_image='skip' to skip it)")
    # The file's bytes when TF decodes them faithfully (JPEG stays JPEG), else the decoded RGB array.
    image = path if _passthrough(path) else sources.decode_image(path)
    yield int(i), {"image": image, "label": labels[i], "id": int(i), "path": relpaths[i]}


class _RetrievalBuilder:
  """What the two project builders share; they differ only in how they scan manual_dir."""

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(features=_features(self.builder_config))

  def _splits(self, root: str, relpaths, labels, origin) -> dict:
    return {
      s: self._generate_examples(root, relpaths, labels, np.flatnonzero(origin == s))
      for s in sorted(set(origin.tolist()))
    }

  def _generate_examples(self, root, relpaths, labels, rows):
    return _generate(root, relpaths, labels, rows, self.builder_config)


class SsdhImageFolder(_RetrievalBuilder, tfds.core.GeneratorBasedBuilder):
  """Image-folder retrieval dataset `<manual_dir>/<split>/<class>/*.jpg` (single-label)."""

  VERSION = VERSION
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Put images under <manual_dir>/<split>/<class>/*.jpg (e.g. train/, test/)."

  def _split_generators(self, dl_manager):
    root = str(dl_manager.manual_dir)
    relpaths, labels, class_names, origin = sources.scan_image_folder(root)
    if tuple(class_names) != tuple(self.builder_config.class_names):
      raise ValueError(f"{root}: class folders changed since the builder config was made")
    return self._splits(root, relpaths, labels, origin)


class SsdhListFile(_RetrievalBuilder, tfds.core.GeneratorBasedBuilder):
  """List-file retrieval dataset: `<manual_dir>/*.txt`, one `relpath 0 1 0 ...` line per image."""

  VERSION = VERSION
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Put the images and the list files (relpath 0 1 0 ...) under <manual_dir>."

  def _split_generators(self, dl_manager):
    root = str(dl_manager.manual_dir)
    c = self.builder_config
    relpaths, labels, origin, _ = sources.scan_list_files(root, c.list_names, c.num_labels, c.on_bad_image)
    return self._splits(root, relpaths, labels, origin)


def _config_name(kind: str, root: str, relpaths: Sequence[str], extra: str) -> str:
  h = hashlib.sha256(f"{kind}\0{extra}\0".encode())
  h.update(sources._fingerprint(root, relpaths).encode())
  return f"{kind}_{h.hexdigest()[:16]}"


def _probe_shape(root: str, relpaths: Sequence[str]) -> tuple[Any, ...]:
  """(H, W, 3) when every readable image header gives one size, else (None, None, 3)."""
  sizes = {sources._probe_size(os.path.join(root, r)) for r in relpaths}
  sizes = {s for s in sizes if not isinstance(s, str)}
  return (*next(iter(sizes)), 3) if len(sizes) == 1 else (None, None, 3)


def own_builder(
  name: str,
  *,
  manual_dir: str,
  data_dir: str,
  num_classes: int | None = None,
  list_names: Sequence[str] | str = (),
  on_bad_image: str = "error",
) -> tuple[tfds.core.DatasetBuilder, list[str], np.ndarray]:
  """Builds (if needed) a project builder over `manual_dir`; returns (builder, scanned relpaths, labels)."""
  if not manual_dir:
    raise ValueError(f"tfds builder {name} needs data.manual_dir")
  root = os.path.abspath(manual_dir)
  if isinstance(list_names, str):
    list_names = [n.strip() for n in list_names.split(",") if n.strip()]
  if name == "ssdh_image_folder":
    relpaths, labels, class_names, _ = sources.scan_image_folder(root)
    cfg = dict(kind="folder", class_names=tuple(class_names), num_labels=len(class_names))
    cls = SsdhImageFolder
  elif name == "ssdh_list_file":
    # Malformed lines are reported (or skipped) here, before tfds starts writing.
    relpaths, labels, _, _ = sources.scan_list_files(root, list_names, num_classes, on_bad_image)
    cfg = dict(kind="list", list_names=tuple(list_names), num_labels=labels.shape[1])
    cls = SsdhListFile
  else:
    raise ValueError(f"unknown project builder {name!r} (one of {sources.OWN_TFDS_BUILDERS})")
  shape = _probe_shape(root, relpaths)
  extra = f"{cfg}\0{shape}\0{on_bad_image}"
  config = RetrievalConfig(
    name=_config_name(cfg["kind"], root, relpaths, extra),
    version=VERSION,
    description=f"{name} over {root}",
    image_shape=shape,
    on_bad_image=on_bad_image,
    **cfg,
  )
  builder = cls(config=config, data_dir=data_dir or None)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=root))
  return builder, relpaths, labels


def _read_split(builder: tfds.core.DatasetBuilder, split: str, decode_image: bool) -> dict[str, np.ndarray]:
  decoders = None if decode_image else {"image": tfds.decode.SkipDecoding()}
  ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)
  if not decode_image:
    ds = ds.map(lambda ex: {k: v for k, v in ex.items() if k != "image"})
  cols: dict[str, list] = {}
  for ex in tfds.as_numpy(ds):
    for k, v in ex.items():
      cols.setdefault(k, []).append(v)
  return {k: np.stack(v) if k != "path" else np.asarray(v) for k, v in cols.items()}


def load_own(
  name: str,
  *,
  manual_dir: str,
  data_dir: str,
  num_classes: int | None = None,
  list_names: Sequence[str] | str = (),
  on_bad_image: str = "error",
) -> tuple[sources.Examples, list[dict[str, Any]]]:
  """A project builder's dataset as `Examples` (rows in id order) plus records of the files it skipped.

  Fixed-size datasets (all images one size, e.g. CIFAR-10) come back decoded into one uint8 array; others
  come back as file paths under manual_dir (decoded lazily by the pipeline, never all at once).
  """
  builder, relpaths, _ = own_builder(
    name,
    manual_dir=manual_dir,
    data_dir=data_dir,
    num_classes=num_classes,
    list_names=list_names,
    on_bad_image=on_bad_image,
  )
  fixed = builder.info.features["image"].shape[0] is not None
  parts = [(s, _read_split(builder, s, fixed)) for s in sorted(builder.info.splits.keys())]
  parts = [(s, p) for s, p in parts if p]
  ids = np.concatenate([p["id"] for _, p in parts]).astype(np.int64)
  order = np.argsort(ids, kind="stable")
  origin = np.concatenate([np.full(len(p["id"]), s) for s, p in parts])[order]
  root = os.path.abspath(manual_dir)
  if fixed:
    images: Any = np.concatenate([p["image"] for _, p in parts])[order]
  else:
    rel = np.concatenate([p["path"] for _, p in parts])[order]
    images = [os.path.join(root, r.decode() if isinstance(r, bytes) else str(r)) for r in rel]
  lab = np.concatenate([p["label"] for _, p in parts])[order].astype(np.float32)
  ex = sources.Examples(images, lab, ids[order], origin)
  built = set(ex.ids.tolist())
  skipped = [
    sources.bad_file(os.path.join(root, relpaths[i]), "skipped while building the tfds dataset")
    for i in range(len(relpaths))
    if i not in built
  ]
  return ex, skipped


def load_catalogue(name: str, *, data_dir: str = "", splits: Sequence[str] = ()) -> sources.Examples:
  """A tfds catalogue dataset with a fixed image shape (e.g. 'cifar10') decoded into memory.

  Prepares it like tfds.load does (downloads into data_dir if missing). Rows are ordered by (split name,
  tfds `id` feature when the dataset has one, else read order) and the ids are 0..N-1 in that order.
  Labels: a ClassLabel becomes one-hot, a Sequence(ClassLabel) multi-hot, a (C,) tensor is kept.
  """
  builder = tfds.builder(name, data_dir=data_dir or None)
  builder.download_and_prepare()
  feats = builder.info.features
  if feats["image"].shape[0] is None:
    raise ValueError(f"tfds {name}: images have no fixed size; use source=folder/list or ssdh_* builders")
  names = list(splits) or sorted(builder.info.splits.keys()) or ["test", "train"]  # mock_data has no splits
  label_feat = feats["label"]
  images, labels, keys, origin = [], [], [], []
  for split in names:
    ds = builder.as_dataset(split=split, shuffle_files=False)
    for i, ex in enumerate(tfds.as_numpy(ds)):
      images.append(ex["image"])
      labels.append(ex["label"])
      key = ex.get("id", i)
      keys.append((split, key.decode() if isinstance(key, bytes) else str(key), i))
      origin.append(split)
  if isinstance(label_feat, tfds.features.ClassLabel):
    lab = sources.one_hot(np.asarray(labels), label_feat.num_classes)
  elif isinstance(label_feat, tfds.features.Sequence):
    lab = np.zeros((len(labels), label_feat.feature.num_classes), np.float32)
    for r, ls in enumerate(labels):
      lab[r, np.asarray(ls, np.int64)] = 1.0
  else:
    lab = np.stack(labels).astype(np.float32)
  order = sorted(range(len(keys)), key=lambda r: keys[r])
  imgs = np.stack(images)[order]
  if imgs.shape[-1] == 1:
    imgs = np.repeat(imgs, 3, axis=-1)
  return sources.Examples(
    imgs.astype(np.uint8), lab[order], np.arange(len(order), dtype=np.int64), np.asarray(origin)[order]
  )


def tfds_examples(
  name: str,
  *,
  data_dir: str = "",
  manual_dir: str = "",
  num_classes: int | None = None,
  list_names: Sequence[str] | str = (),
  on_bad_image: str = "error",
) -> tuple[sources.Examples, list[dict[str, Any]]]:
  """A tfds dataset as `Examples` (imports tensorflow_datasets; call only when config.data.source == 'tfds').

  `name` is a catalogue name (e.g. 'cifar10': downloaded into `data_dir` if missing, as tfds.load would),
  or one of the project's builders 'ssdh_image_folder' / 'ssdh_list_file' reading `manual_dir`.
  """
  if name in sources.OWN_TFDS_BUILDERS:
    return load_own(
      name,
      manual_dir=manual_dir,
      data_dir=data_dir,
      num_classes=num_classes,
      list_names=list_names,
      on_bad_image=on_bad_image,
    )
  return load_catalogue(name, data_dir=data_dir), []
