"""Tests for ssdh_jax.data.sources and ssdh_jax.data.tfds_builders.

Oracles: pixel arrays written by the test itself (PNG is lossless), sklearn's own digits, and for JPEG inputs
PIL decoding the same bytes. No test reaches a download: the catalogue dataset runs under
tfds.testing.mock_data with a temporary data_dir, and the builders read folders made here.
"""

import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from ssdh_jax.data import pipeline, sources

CIFAR_ARCHIVE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cifar10-jpeg.tar.xz")


def _write(path, array, fmt=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path, format=fmt)


def _tiny_folder(root, rng, size=(6, 5), ext="png"):
  """train/{cat,dog}/k.png x3 and test/{cat,dog}/k.png x2 with random pixels; returns {relpath: array}."""
  arrays = {}
  for split, n in (("train", 3), ("test", 2)):
    for cls in ("dog", "cat"):
      for k in range(n):
        rel = f"{split}/{cls}/{k}.{ext}"
        arrays[rel] = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        _write(os.path.join(root, rel), arrays[rel])
  return arrays


def _truncated_jpeg(path, rng):
  _write(path, rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), "JPEG")
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[: len(data) // 2])


# ----------------------------------------------------------------------------------------------- digits / arrays


def test_digits_matches_sklearn():
  from sklearn.datasets import load_digits

  d = load_digits()
  ex = sources.digits()
  assert ex.images.shape == (1797, 8, 8, 3) and ex.images.dtype == np.uint8
  assert ex.labels.shape == (1797, 10) and ex.labels.dtype == np.float32
  np.testing.assert_array_equal(ex.labels.argmax(1), d.target)
  np.testing.assert_array_equal(ex.labels.sum(1), 1)
  np.testing.assert_array_equal(ex.ids, np.arange(1797))
  # 0..16 grey levels scaled to 0..255, same value in each channel.
  for c in range(3):
    np.testing.assert_array_equal(ex.images[..., c].astype(int), np.rint(d.images * 255 / 16).astype(int))
  assert ex.images.max() == 255 and ex.images.min() == 0


def test_from_arrays_grey_int_labels_and_errors():
  imgs = np.arange(4 * 3 * 2, dtype=np.uint8).reshape(4, 3, 2)
  ex = sources.from_arrays(imgs, np.array([2, 0, 1, 2]), num_classes=4)
  assert ex.images.shape == (4, 3, 2, 3)
  np.testing.assert_array_equal(ex.images[..., 2], imgs)
  np.testing.assert_array_equal(ex.labels, np.eye(4, dtype=np.float32)[[2, 0, 1, 2]])
  sub = ex.subset(np.array([3, 1]))
  np.testing.assert_array_equal(sub.ids, [3, 1])
  with pytest.raises(ValueError, match="unique"):
    sources.from_arrays(imgs, np.zeros(4, int), ids=np.array([0, 1, 1, 2]))
  with pytest.raises(ValueError, match="uint8"):
    sources.from_arrays(imgs.astype(np.float32), np.zeros(4, int))
  with pytest.raises(ValueError, match="same length"):
    sources.Examples(np.zeros((3, 2, 2, 3), np.uint8), np.zeros((4, 2), np.float32), np.arange(4))


def test_load_npz(tmp_path):
  rng = np.random.default_rng(0)
  imgs = rng.integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
  labels = np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1]]
  np.savez(tmp_path / "d.npz", images=imgs, labels=labels, ids=np.arange(10, 15))
  ex = sources.load_npz(str(tmp_path / "d.npz"))
  np.testing.assert_array_equal(ex.images, imgs)
  np.testing.assert_array_equal(ex.ids, np.arange(10, 15))


# ----------------------------------------------------------------------------------------------- image folders


def test_image_folder_in_memory_exact(tmp_path):
  rng = np.random.default_rng(1)
  arrays = _tiny_folder(str(tmp_path), rng)
  (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")  # ignored
  ex, skipped, classes = sources.image_folder(str(tmp_path))
  assert classes == ["cat", "dog"] and skipped == []
  rels = sorted(arrays)
  assert ex.in_memory and ex.images.shape == (10, 6, 5, 3)
  np.testing.assert_array_equal(ex.ids, np.arange(10))
  for i, rel in enumerate(rels):
    np.testing.assert_array_equal(ex.images[i], arrays[rel])
    split, cls, _ = rel.split("/")
    assert ex.origin[i] == split
    np.testing.assert_array_equal(ex.labels[i], np.eye(2)[classes.index(cls)])


def test_image_folder_cache(tmp_path):
  rng = np.random.default_rng(2)
  root, cache = str(tmp_path / "img"), str(tmp_path / "cache")
  _tiny_folder(root, rng)
  a, _, _ = sources.image_folder(root, cache_dir=cache)
  assert any(n.endswith(".npy") for n in os.listdir(cache))
  b, _, _ = sources.image_folder(root, cache_dir=cache)
  np.testing.assert_array_equal(a.images, b.images)
  # Editing a file changes the fingerprint: the cache is not reused.
  new = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
  _write(os.path.join(root, "train/cat/0.png"), new)
  os.utime(os.path.join(root, "train/cat/0.png"), ns=(1, 1))
  c, _, _ = sources.image_folder(root, cache_dir=cache)
  row = sources.scan_image_folder(root)[0].index("train/cat/0.png")
  np.testing.assert_array_equal(c.images[row], new)


def test_image_folder_variable_sizes_keep_paths(tmp_path):
  rng = np.random.default_rng(3)
  arrays = _tiny_folder(str(tmp_path), rng)
  _write(str(tmp_path / "train/dog/big.png"), rng.integers(0, 256, (9, 7, 3), dtype=np.uint8))
  ex, _, _ = sources.image_folder(str(tmp_path))
  assert not ex.in_memory and len(ex) == len(arrays) + 1
  assert all(os.path.isabs(p) and os.path.exists(p) for p in ex.images)
  with pytest.raises(ValueError, match="always"):
    sources.materialize(str(tmp_path), ["train/dog/big.png"], in_memory="always", max_bytes=10)


def test_image_folder_corrupt_jpeg_error_and_skip(tmp_path):
  rng = np.random.default_rng(4)
  _tiny_folder(str(tmp_path), rng)
  bad = str(tmp_path / "train/dog/zz.png")
  with open(bad, "wb") as f:
    f.write(b"\x89PNG not really")
  with pytest.raises(ValueError, match=r"train/dog/zz\.png"):
    sources.image_folder(str(tmp_path))
  ex, skipped, _ = sources.image_folder(str(tmp_path), on_bad_image="skip")
  assert len(skipped) == 1 and skipped[0]["file"] == bad
  assert len(ex) == 10
  # Ids are rows of the full sorted listing: the bad file's id is missing, the others keep theirs.
  rels = sources.scan_image_folder(str(tmp_path))[0]
  assert rels.index("train/dog/zz.png") not in set(ex.ids.tolist())


def test_check_image_file_detects_truncation_and_missing(tmp_path):
  rng = np.random.default_rng(5)
  good = str(tmp_path / "g.jpg")
  _write(good, rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), "JPEG")
  assert sources.check_image_file(good) is None
  trunc = str(tmp_path / "t.jpg")
  _truncated_jpeg(trunc, rng)
  assert "decode" in sources.check_image_file(trunc)
  assert "does not exist" in sources.check_image_file(str(tmp_path / "nope.jpg"))


def test_empty_folder_is_an_error(tmp_path):
  (tmp_path / "train" / "a").mkdir(parents=True)
  with pytest.raises(ValueError, match="no <split>/<class>"):
    sources.scan_image_folder(str(tmp_path))


# ----------------------------------------------------------------------------------------------- list files


def _tiny_list(root, rng):
  """images/<k>.png of varying sizes; database.txt (4 lines) and test.txt (2 lines), 3 labels."""
  rows = {}
  for k in range(6):
    rel = f"images/{k}.png"
    _write(os.path.join(root, rel), rng.integers(0, 256, (5 + k, 4 + k, 3), dtype=np.uint8))
    rows[rel] = (rng.random(3) < 0.5).astype(np.float32)
  lines = {rel: rel + " " + " ".join(str(int(v)) for v in lab) for rel, lab in rows.items()}
  rels = sorted(rows)
  with open(os.path.join(root, "database.txt"), "w") as f:
    f.write("\n".join(lines[r] for r in rels[:4]) + "\n\n")
  with open(os.path.join(root, "test.txt"), "w") as f:
    f.write("\n".join(lines[r] for r in rels[4:]) + "\n" + lines[rels[0]] + "\n")  # duplicate of a db row
  return rows


def test_list_files_parse_merge(tmp_path):
  rows = _tiny_list(str(tmp_path), np.random.default_rng(6))
  ex, skipped = sources.list_files(str(tmp_path), num_classes=3)
  assert skipped == [] and len(ex) == 6 and not ex.in_memory
  rels = sorted(rows)
  for i, rel in enumerate(rels):
    assert ex.images[i] == os.path.join(str(tmp_path), rel)
    np.testing.assert_array_equal(ex.labels[i], rows[rel])
  np.testing.assert_array_equal(ex.ids, np.arange(6))
  assert ex.origin.tolist() == ["database"] * 4 + ["test"] * 2  # the duplicate keeps its first list
  only_test, _ = sources.list_files(str(tmp_path), "test.txt")
  assert len(only_test) == 3


def test_list_file_wrong_width_names_line(tmp_path):
  rows = _tiny_list(str(tmp_path), np.random.default_rng(7))
  with open(tmp_path / "test.txt", "a") as f:
    f.write(sorted(rows)[5] + " 1 0\n")  # line 4: two labels instead of three
  with pytest.raises(ValueError, match=r"test\.txt:4: expected 3 labels, got 2"):
    sources.list_files(str(tmp_path), num_classes=3)
  ex, skipped = sources.list_files(str(tmp_path), num_classes=3, on_bad_image="skip")
  assert [(s["line"], os.path.basename(s["file"])) for s in skipped] == [(4, "test.txt")]
  assert len(ex) == 6
  with pytest.raises(ValueError, match="width 3"):
    pipeline.validate_examples(ex, 5)


def test_list_file_bad_values_and_conflicts(tmp_path):
  (tmp_path / "a.txt").write_text("x.jpg 0 2\n")
  with pytest.raises(ValueError, match=r"a\.txt:1: labels must be 0 or 1"):
    sources.parse_list_file(str(tmp_path / "a.txt"))
  (tmp_path / "a.txt").write_text("x.jpg 0 1\n")
  (tmp_path / "b.txt").write_text("x.jpg 1 1\n")
  with pytest.raises(ValueError, match="different labels"):
    sources.scan_list_files(str(tmp_path))
  with pytest.raises(ValueError, match="does not exist"):
    sources.find_list_files(str(tmp_path), "c.txt")


def test_list_missing_and_corrupt_files_caught_by_validation(tmp_path):
  rng = np.random.default_rng(8)
  rows = _tiny_list(str(tmp_path), rng)
  _truncated_jpeg(str(tmp_path / "images" / "t.jpg"), rng)
  with open(tmp_path / "database.txt", "a") as f:
    f.write("images/missing.jpg 1 0 0\nimages/t.jpg 0 1 0\n")
  ex, _ = sources.list_files(str(tmp_path), num_classes=3)
  with pytest.raises(ValueError, match=r"images/missing\.jpg: file does not exist"):
    pipeline.validate_examples(ex, 3)
  good, skipped = pipeline.validate_examples(ex, 3, on_bad_image="skip")
  assert sorted(os.path.basename(s["file"]) for s in skipped) == ["missing.jpg", "t.jpg"]
  assert len(good) == len(rows)


def test_load_pool_dispatch(tmp_path):
  from configs import default

  d = default.get_config().data  # every field the loader reads comes from configs/default.py
  d.source = "digits"
  ex, _ = pipeline.load_pool(d)
  assert len(ex) == 1797
  _tiny_folder(str(tmp_path), np.random.default_rng(9))
  d.source, d.manual_dir = "folder", str(tmp_path)
  ex, _ = pipeline.load_pool(d)
  assert ex.images.shape == (10, 6, 5, 3)
  d.source = "nope"
  with pytest.raises(ValueError, match=r"unknown data\.source"):
    pipeline.load_pool(d)


def test_package_import_pulls_neither_tensorflow_nor_the_configs_package():
  # Every module of the library but the tfds builders (which exist to import tensorflow_datasets); run from
  # the repository root, where the top-level `configs` package is importable, so importing it would show.
  code = (
    "import importlib, pkgutil, sys, ssdh_jax\n"
    "for m in pkgutil.walk_packages(ssdh_jax.__path__, 'ssdh_jax.'):\n"
    "  if not m.name.endswith('tfds_builders'):\n"
    "    importlib.import_module(m.name)\n"
    "bad = [m for m in ('tensorflow', 'tensorflow_datasets', 'configs') if m in sys.modules]\n"
    "assert not bad, bad\n"
  )
  subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))


# ----------------------------------------------------------------------------------------------- tfds


def _tfds_examples(*args, **kwargs):
  from ssdh_jax.data import tfds_builders  # imports tensorflow_datasets: only in the tfds tests

  return tfds_builders.tfds_examples(*args, **kwargs)


@pytest.fixture(scope="module")
def tfds_mod():
  return pytest.importorskip("tensorflow_datasets")


def test_tfds_image_folder_builder_exact_and_bad_files(tmp_path, tfds_mod):
  rng = np.random.default_rng(10)
  root = str(tmp_path / "manual")
  arrays = _tiny_folder(root, rng)
  ex, skipped = _tfds_examples("ssdh_image_folder", manual_dir=root, data_dir=str(tmp_path / "tfds"))
  ref, _, _ = sources.image_folder(root)
  assert skipped == [] and ex.in_memory
  np.testing.assert_array_equal(ex.ids, ref.ids)
  np.testing.assert_array_equal(ex.images, ref.images)  # PNG: lossless through tfds
  np.testing.assert_array_equal(ex.images[0], arrays[sorted(arrays)[0]])
  np.testing.assert_array_equal(ex.labels, ref.labels)
  assert ex.origin.tolist() == ref.origin.tolist()

  _truncated_jpeg(os.path.join(root, "test/cat/9.jpg"), rng)
  _write(os.path.join(root, "test/cat/8.jpg"), rng.integers(0, 256, (6, 5, 3), dtype=np.uint8), "JPEG")
  with pytest.raises(Exception, match=r"test/cat/9\.jpg"):
    _tfds_examples("ssdh_image_folder", manual_dir=root, data_dir=str(tmp_path / "tfds"))
  ex, skipped = _tfds_examples(
    "ssdh_image_folder", manual_dir=root, data_dir=str(tmp_path / "tfds"), on_bad_image="skip"
  )
  assert [os.path.basename(s["file"]) for s in skipped] == ["9.jpg"]
  assert len(ex) == 11
  # The JPEG row: tfds decodes the file's own bytes; PIL's decode of them is the oracle (within IDCT rounding).
  rels = sources.scan_image_folder(root)[0]
  row = int(np.flatnonzero(ex.ids == rels.index("test/cat/8.jpg"))[0])
  pil = np.asarray(Image.open(os.path.join(root, "test/cat/8.jpg")).convert("RGB")).astype(int)
  assert np.abs(ex.images[row].astype(int) - pil).max() <= 8


def test_tfds_list_file_builder_variable_sizes(tmp_path, tfds_mod):
  root = str(tmp_path / "manual")
  rows = _tiny_list(root, np.random.default_rng(11))
  ex, skipped = _tfds_examples(
    "ssdh_list_file", manual_dir=root, data_dir=str(tmp_path / "tfds"), num_classes=3
  )
  assert skipped == [] and not ex.in_memory  # several image sizes: the files stay on disk
  assert list(ex.images) == [os.path.join(root, r) for r in sorted(rows)]
  np.testing.assert_array_equal(ex.labels, np.stack([rows[r] for r in sorted(rows)]))
  assert set(ex.origin.tolist()) == {"database", "test"}


def _extract_cifar_slice(dest, per_class=10):
  """Streams the shared archive and extracts the first `per_class` files of each split/class."""
  taken = {}
  with tarfile.open(CIFAR_ARCHIVE, "r:xz") as tar:
    for m in tar:
      parts = m.name.split("/")
      if not m.isfile() or len(parts) < 3 or not m.name.endswith(".jpg"):
        continue
      key = tuple(parts[-3:-1])
      if taken.get(key, 0) >= per_class:
        continue
      taken[key] = taken.get(key, 0) + 1
      out = os.path.join(dest, *parts[-3:])
      os.makedirs(os.path.dirname(out), exist_ok=True)
      with tar.extractfile(m) as src, open(out, "wb") as f:
        f.write(src.read())
  return taken


@pytest.mark.skipif(not os.path.exists(CIFAR_ARCHIVE), reason="shared CIFAR-10 archive not present")
def test_tfds_image_folder_on_real_cifar_slice(tmp_path, tfds_mod):
  root = str(tmp_path / "cifar")
  taken = _extract_cifar_slice(root, per_class=10)
  assert len(taken) == 20  # {train, test} x 10 classes
  ex, skipped = _tfds_examples("ssdh_image_folder", manual_dir=root, data_dir=str(tmp_path / "tfds"))
  ref, _, classes = sources.image_folder(root)
  assert skipped == [] and ex.images.shape == (200, 32, 32, 3)
  assert classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
  np.testing.assert_array_equal(ex.ids, ref.ids)
  np.testing.assert_array_equal(ex.labels, ref.labels)
  np.testing.assert_array_equal(np.bincount(ex.labels.argmax(1)), np.full(10, 20))
  assert sorted(set(ex.origin.tolist())) == ["test", "train"]
  # Same JPEG bytes decoded by TensorFlow (fast integer IDCT) and by PIL (slow integer IDCT): they differ by
  # rounding only (measured: mean 1.0, max 5); a wrong row order would differ by tens of levels.
  diff = np.abs(ex.images.astype(int) - ref.images.astype(int))
  assert diff.mean() < 1.5 and diff.max() <= 8


def test_tfds_catalogue_cifar10_with_mock_data(tmp_path, tfds_mod):
  with tfds_mod.testing.mock_data(num_examples=6, data_dir=str(tmp_path / "tfds")):
    ex, skipped = _tfds_examples("cifar10", data_dir=str(tmp_path / "tfds"))
  assert skipped == []
  assert ex.images.shape == (12, 32, 32, 3) and ex.images.dtype == np.uint8
  assert ex.labels.shape == (12, 10)
  np.testing.assert_array_equal(ex.labels.sum(1), 1)
  np.testing.assert_array_equal(ex.ids, np.arange(12))
  assert ex.origin.tolist() == ["test"] * 6 + ["train"] * 6
  assert not os.path.exists(tmp_path / "tfds" / "downloads")
