"""Tests for ssdh_jax.data.pipeline: batch composition, order/resume, augmentation, sharding, validation.

Oracles: images that encode their own id in their pixels (so image/label/id agreement is checked without the
pipeline's bookkeeping), brute-force search over every crop offset and flip, and PIL resizes done here.
"""

import functools
import os

import jax
import ml_collections
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from configs import default
from ssdh_jax.data import pipeline, sources


def _coded_examples(ids, num_classes=4, size=8, seed=0):
  """Images whose channel 0/1 hold id % 256 / id // 256 (channel 2 random), labels from a seeded draw."""
  ids = np.asarray(ids, np.int64)
  rng = np.random.default_rng(seed)
  imgs = rng.integers(0, 256, (len(ids), size, size, 3), dtype=np.uint8)
  imgs[..., 0] = (ids % 256)[:, None, None]
  imgs[..., 1] = (ids // 256)[:, None, None]
  labels = (rng.random((len(ids), num_classes)) < 0.4).astype(np.float32)
  labels[np.arange(len(ids)), ids % num_classes] = 1
  return sources.Examples(imgs, labels, ids)


def _decode_ids(images):
  return images[:, 0, 0, 0].astype(np.int64) + 256 * images[:, 0, 0, 1].astype(np.int64)


def _config(batch_size=32, fraction=0.5, augment="none", image_size=8, **data):
  c = default.get_config()
  with c.unlocked():  # num_workers is optional (read with .get) and may be absent from default.py
    c.train.batch_size = batch_size
    c.data.labeled_fraction = fraction
    c.data.augment = augment
    c.data.image_size = image_size
    c.data.num_workers = 1
    for k, v in data.items():
      setattr(c.data, k, v)
  return c


def _splits(n_lab=48, n_unl=200, **kw):
  lab = _coded_examples(np.arange(n_lab), **kw)
  unl = _coded_examples(np.arange(1000, 1000 + n_unl), seed=1, **kw)
  return {"train_labeled": lab, "train_unlabeled": unl}


def test_composition_labels_and_epoch_coverage():
  s = _splits(48, 200)
  c = _config(32, 0.5)
  lab_by_id = {int(i): s["train_labeled"].labels[r] for r, i in enumerate(s["train_labeled"].ids)}
  seen = []
  for step in range(6):
    b = pipeline.train_batch(s, c, seed=0, step=step)
    assert b["image"].shape == (32, 8, 8, 3) and b["image"].dtype == np.uint8
    assert b["labels"].dtype == np.float32 and b["labeled"].dtype == bool and b["id"].dtype == np.int64
    assert b["labeled"].sum() == 16
    np.testing.assert_array_equal(_decode_ids(b["image"]), b["id"])  # image rows match their ids
    lab, unl = b["labeled"], ~b["labeled"]
    assert (b["id"][lab] < 1000).all() and (b["id"][unl] >= 1000).all()
    assert not b["labels"][unl].any()  # unlabeled rows carry all-zero labels
    for i, y in zip(b["id"][lab], b["labels"][lab]):
      np.testing.assert_array_equal(y, lab_by_id[int(i)])
    seen.append(b["id"][lab])
  # 48 labeled images, 16 per step: steps 0-2 show each exactly once, steps 3-5 again exactly once.
  assert sorted(np.concatenate(seen[:3]).tolist()) == list(range(48))
  assert sorted(np.concatenate(seen[3:]).tolist()) == list(range(48))
  assert not np.array_equal(np.concatenate(seen[:3]), np.concatenate(seen[3:]))  # reshuffled per epoch


@pytest.mark.parametrize("n_lab,bsz,fraction", [(50, 32, 0.5), (7, 20, 0.3), (300, 128, 0.52)])
def test_every_labeled_image_within_one_labeled_epoch(n_lab, bsz, fraction):
  s = _splits(n_lab, 500)
  c = _config(bsz, fraction)
  per = round(bsz * fraction)
  steps = -(-n_lab // per)
  ids = np.concatenate([pipeline.train_batch(s, c, 3, t)["id"] for t in range(steps)])
  lab_ids = ids[ids < 1000]
  assert len(lab_ids) == steps * per
  assert set(lab_ids.tolist()) == set(range(n_lab))
  assert abs(per / bsz - fraction) <= 0.5 / bsz  # the fraction, to within one row


def test_include_unlabeled_false_and_empty_unlabeled_pool():
  s = _splits(40, 100)
  b = pipeline.train_batch(s, _config(16, 0.5, include_unlabeled=False), 0, 0)
  assert b["labeled"].all() and (b["id"] < 1000).all()
  s["train_unlabeled"] = s["train_unlabeled"].subset(np.zeros(0, np.int64))
  b = pipeline.train_batch(s, _config(16, 0.5), 0, 0)
  assert b["labeled"].all()


def test_resume_is_exact_and_seed_matters():
  s = _splits(48, 200, size=12)
  c = _config(32, 0.5, augment="pad_crop_flip", image_size=12, pad=2)
  it = pipeline.train_batches(s, c, seed=7, start_step=0)
  full = [next(it) for _ in range(7)]
  it.close()
  it = pipeline.train_batches(s, c, seed=7, start_step=4)
  resumed = [next(it) for _ in range(3)]
  it.close()
  for a, b in zip(full[4:], resumed):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  other = pipeline.train_batch(s, c, seed=8, step=4)
  assert not np.array_equal(other["id"], full[4]["id"])
  assert not np.array_equal(full[4]["id"], full[5]["id"])


@settings(max_examples=40, deadline=None)
@given(
  n=st.integers(1, 40),
  start=st.integers(0, 200),
  a=st.integers(0, 60),
  b=st.integers(0, 60),
  seed=st.integers(0, 2**32),
)
def test_stream_rows_windows_compose(n, start, a, b, seed):
  whole = pipeline.stream_rows(seed, 0, n, start, a + b)
  parts = np.concatenate(
    [pipeline.stream_rows(seed, 0, n, start, a), pipeline.stream_rows(seed, 0, n, start + a, b)]
  )
  np.testing.assert_array_equal(whole, parts)
  epoch = start // n
  aligned = pipeline.stream_rows(seed, 0, n, epoch * n, n)
  assert sorted(aligned.tolist()) == list(range(n))


def _is_crop_of(out, src, flips=(False, True)):
  """True when `out` equals some (possibly h-flipped) crop of `src` (brute force over all offsets)."""
  s = out.shape[0]
  for y in range(src.shape[0] - s + 1):
    for x in range(src.shape[1] - s + 1):
      crop = src[y : y + s, x : x + s]
      for f in flips:
        if np.array_equal(out, crop[:, ::-1] if f else crop):
          return True
  return False


def test_host_pad_crop_flip_is_a_crop_of_the_padded_image():
  rng = np.random.default_rng(0)
  imgs = rng.integers(0, 256, (24, 10, 10, 3), dtype=np.uint8)
  c = _config(augment="pad_crop_flip", image_size=10, pad=3)
  out = pipeline.host_augment(np.random.default_rng(1), imgs, c)
  assert out.shape == (24, 10, 10, 3) and out.dtype == np.uint8
  padded = np.pad(imgs, ((0, 0), (3, 3), (3, 3), (0, 0)))
  assert all(_is_crop_of(o, p) for o, p in zip(out, padded))
  flipped = [not _is_crop_of(o, p, flips=(False,)) for o, p in zip(out, padded)]
  assert 0 < sum(flipped) < 24
  assert len({o.tobytes() for o in out}) == 24


@pytest.mark.parametrize("augment,pad", [("pad_crop_flip", 4), ("crop_flip", 0)])
def test_batched_and_per_row_host_paths_agree(augment, pad):
  imgs = np.random.default_rng(7).integers(0, 256, (16, 12, 12, 3), dtype=np.uint8)
  c = _config(augment=augment, image_size=10, pad=pad)
  batched = pipeline.host_augment(np.random.default_rng(3), imgs, c)  # one pad + slice loop
  per_row = pipeline.host_augment(np.random.default_rng(3), list(imgs), c)  # per-image path
  np.testing.assert_array_equal(batched, per_row)


def test_host_crop_flip_with_resize_matches_pil_and_eval_centre_crop():
  rng = np.random.default_rng(2)
  imgs = rng.integers(0, 256, (6, 9, 9, 3), dtype=np.uint8)
  c = _config(augment="crop_flip", image_size=11, resize_size=14)
  resized = np.stack([np.asarray(Image.fromarray(im).resize((14, 14), Image.BILINEAR)) for im in imgs])
  s = {"train_labeled": sources.Examples(imgs, np.eye(2, dtype=np.float32)[[0, 1] * 3], np.arange(6))}
  s["train_unlabeled"] = s["train_labeled"].subset(np.zeros(0, np.int64))
  c.train.batch_size = 6
  b = pipeline.train_batch(s, c, 0, 0)
  assert b["image"].shape == (6, 11, 11, 3)
  assert all(_is_crop_of(o, resized[i]) for o, i in zip(b["image"], b["id"]))
  ev = next(pipeline.eval_batches(s["train_labeled"], c, 4))
  np.testing.assert_array_equal(ev["image"], resized[:4, 1:12, 1:12])
  np.testing.assert_array_equal(pipeline.eval_images(list(imgs[:2]), c), resized[:2, 1:12, 1:12])


@pytest.mark.parametrize("src_hw", [(9, 9), (7, 11), (40, 24)])
def test_host_crop_flip_power_of_two_resize_is_pils_resize_then_crop(src_hw):
  # resize_size 16 takes the box-resampling path (only the crop is computed); its pixels must be exactly a
  # crop (+ flip) of PIL's resize of the whole image, upsampling and downsampling alike.
  rng = np.random.default_rng(5)
  imgs = rng.integers(0, 256, (12, *src_hw, 3), dtype=np.uint8)
  c = _config(augment="crop_flip", image_size=13, resize_size=16)
  resized = [np.asarray(Image.fromarray(im).resize((16, 16), Image.BILINEAR)) for im in imgs]
  out = pipeline.host_augment(np.random.default_rng(6), list(imgs), c)
  assert out.shape == (12, 13, 13, 3)
  assert all(_is_crop_of(o, r) for o, r in zip(out, resized))
  flipped = [not _is_crop_of(o, r, flips=(False,)) for o, r in zip(out, resized)]
  assert 0 < sum(flipped) < 12


def test_host_crop_flip_from_files_decodes_at_own_size_and_matches_pil(tmp_path):
  # Files with a power-of-two resize are decoded at their own size and only the crop's box is resampled; the
  # pixels must equal decoding, resizing the whole image (PIL bilinear) and cropping.
  rng = np.random.default_rng(8)
  imgs = rng.integers(0, 256, (6, 20, 12, 3), dtype=np.uint8)
  paths = []
  for i, im in enumerate(imgs):
    paths.append(str(tmp_path / f"{i}.png"))
    Image.fromarray(im).save(paths[-1])
  c = _config(augment="crop_flip", image_size=13, resize_size=16)
  c.train.batch_size = 6
  s = {"train_labeled": sources.Examples(paths, np.eye(2, dtype=np.float32)[[0, 1] * 3], np.arange(6))}
  s["train_unlabeled"] = s["train_labeled"].subset(np.zeros(0, np.int64))
  b = pipeline.train_batch(s, c, 0, 0)
  resized = [np.asarray(Image.fromarray(im).resize((16, 16), Image.BILINEAR)) for im in imgs]
  assert b["image"].shape == (6, 13, 13, 3)
  assert all(_is_crop_of(o, resized[i]) for o, i in zip(b["image"], b["id"]))


def test_eval_transform_without_resize():
  rng = np.random.default_rng(3)
  big = rng.integers(0, 256, (13, 12, 3), dtype=np.uint8)
  c = _config(image_size=8, resize_size=0)
  np.testing.assert_array_equal(pipeline.eval_transform_one(big, c), big[2:10, 2:10])
  small = big[:5, :6]
  want = np.asarray(Image.fromarray(small).resize((8, 8), Image.BILINEAR))
  np.testing.assert_array_equal(pipeline.eval_transform_one(small, c), want)


def test_device_augment_pad_crop_flip_exact():
  rng = np.random.default_rng(4)
  imgs = rng.integers(0, 256, (32, 8, 8, 3), dtype=np.uint8)
  c = _config(augment="pad_crop_flip", image_size=8, pad=2)
  fn = jax.jit(functools.partial(pipeline.device_augment, config=c))
  out = np.asarray(fn(jax.random.PRNGKey(0), imgs))
  assert out.shape == (32, 8, 8, 3) and out.dtype == np.float32
  padded = np.pad(imgs, ((0, 0), (2, 2), (2, 2), (0, 0))).astype(np.float32)
  assert all(_is_crop_of(o, p) for o, p in zip(out, padded))
  flipped = sum(not _is_crop_of(o, p, flips=(False,)) for o, p in zip(out, padded))
  assert 0 < flipped < 32
  again = np.asarray(fn(jax.random.PRNGKey(0), imgs))
  np.testing.assert_array_equal(out, again)
  assert not np.array_equal(out, np.asarray(fn(jax.random.PRNGKey(1), imgs)))


def test_device_crop_flip_and_eval_agree_with_host():
  rng = np.random.default_rng(5)
  # Smooth images: bilinear upsampling by PIL and jax.image then differ only by rounding.
  base = rng.integers(0, 256, (4, 4, 4, 3), dtype=np.uint8)
  imgs = np.stack([np.asarray(Image.fromarray(b).resize((16, 16), Image.BICUBIC)) for b in base])
  c = _config(augment="crop_flip", image_size=20, resize_size=24)
  host = pipeline.eval_transform(imgs, c).astype(np.float32)
  dev = np.asarray(pipeline.device_eval_transform(imgs, c))
  assert dev.shape == host.shape == (4, 20, 20, 3)
  assert np.abs(dev - host).max() <= 1.5 and np.abs(dev - host).mean() < 0.5
  out = np.asarray(pipeline.device_augment(jax.random.PRNGKey(3), imgs, c))
  ref = np.asarray(jax.image.resize(imgs.astype(np.float32), (4, 24, 24, 3), "bilinear"))
  assert out.shape == (4, 20, 20, 3)
  assert all(_is_crop_of(o, r) for o, r in zip(out, ref))


def test_on_device_batches_are_unaugmented():
  s = _splits(48, 200, size=10)
  c = _config(32, 0.5, augment="pad_crop_flip", image_size=10, on_device_augment=True)
  b = pipeline.train_batch(s, c, 0, 0)
  assert b["image"].shape == (32, 10, 10, 3)
  np.testing.assert_array_equal(_decode_ids(b["image"]), b["id"])
  ref = {int(i): im for i, im in zip(s["train_labeled"].ids, s["train_labeled"].images)}
  ref.update({int(i): im for i, im in zip(s["train_unlabeled"].ids, s["train_unlabeled"].images)})
  for i, im in zip(b["id"], b["image"]):
    np.testing.assert_array_equal(im, ref[int(i)])


def test_file_backed_batches(tmp_path):
  rng = np.random.default_rng(6)
  paths, arrays = [], []
  for k in range(12):
    a = rng.integers(0, 256, (6 + k % 3, 7, 3), dtype=np.uint8)
    p = str(tmp_path / f"{k}.png")
    Image.fromarray(a).save(p)
    paths.append(p)
    arrays.append(a)
  ex = sources.Examples(paths, np.eye(3, dtype=np.float32)[np.arange(12) % 3], np.arange(12))
  s = {"train_labeled": ex.subset(np.arange(6)), "train_unlabeled": ex.subset(np.arange(6, 12))}
  c = _config(8, 0.5, augment="crop_flip", image_size=5, resize_size=9)
  b = pipeline.train_batch(s, c, 0, 0)
  assert b["image"].shape == (8, 5, 5, 3)
  for o, i in zip(b["image"], b["id"]):
    ref = np.asarray(Image.fromarray(arrays[i]).resize((9, 9), Image.BILINEAR))
    assert _is_crop_of(o, ref)
  batches = list(pipeline.eval_batches(ex, c, 5, pad=True))
  assert [len(x["id"]) for x in batches] == [5, 5, 5]
  assert batches[-1]["mask"].tolist() == [True, True, False, False, False]
  assert batches[-1]["id"].tolist()[2:] == [-1, -1, -1]
  np.testing.assert_array_equal(np.concatenate([x["id"][x["mask"]] for x in batches]), np.arange(12))


def _png_splits(tmp_path):
  rng = np.random.default_rng(6)
  paths = []
  for k in range(12):
    p = str(tmp_path / f"{k}.png")
    Image.fromarray(rng.integers(0, 256, (6 + k % 3, 7, 3), dtype=np.uint8)).save(p)
    paths.append(p)
  ex = sources.Examples(paths, np.eye(3, dtype=np.float32)[np.arange(12) % 3], np.arange(12))
  return {"train_labeled": ex.subset(np.arange(6)), "train_unlabeled": ex.subset(np.arange(6, 12))}


@pytest.mark.parametrize(
  "source,data",
  [
    ("arrays", dict(augment="pad_crop_flip")),
    ("arrays", dict(augment="none")),
    ("arrays", dict(augment="pad_crop_flip", on_device_augment=True)),
    ("features", dict(augment="none")),
    ("files", dict(augment="crop_flip", image_size=5, resize_size=9)),
    ("files", dict(augment="crop_flip", image_size=5, resize_size=9, on_device_augment=True)),
  ],
)
def test_host_shares_are_the_rows_of_the_global_batch(tmp_path, source, data):
  """A process of a multi-host run builds only rows [lo, hi) of each global batch: exactly those rows."""
  bsz = 8 if source == "files" else 32
  if source == "files":
    s = _png_splits(tmp_path)
  else:
    s = _splits(48, 200, size=10)
  if source == "features":
    for k, ex in s.items():
      feats = np.random.default_rng(len(ex)).normal(size=(len(ex), 6)).astype(np.float32)
      s[k] = sources.Examples(feats, ex.labels, ex.ids)
  c = _config(bsz, 0.5, **{"image_size": 10, **data})
  for step in (0, 3):
    full = pipeline.train_batch(s, c, 0, step)
    for lo, hi in ((0, bsz // 4), (bsz // 4, bsz // 2), (bsz // 2, bsz)):
      part = pipeline.train_batch(s, c, 0, step, rows=(lo, hi))
      assert part.keys() == full.keys()
      for k in full:
        np.testing.assert_array_equal(part[k], full[k][lo:hi], err_msg=f"{k} rows {lo}:{hi}")
  with pytest.raises(ValueError, match="not a slice"):
    pipeline.train_batch(s, c, 0, 0, rows=(0, bsz + 1))


def test_shard():
  b = {"image": np.arange(8 * 2 * 2 * 3).reshape(8, 2, 2, 3), "id": np.arange(8)}
  sh = pipeline.shard(b, 4)
  assert sh["image"].shape == (4, 2, 2, 2, 3) and sh["id"].shape == (4, 2)
  np.testing.assert_array_equal(sh["id"].reshape(-1), b["id"])
  np.testing.assert_array_equal(sh["id"][1], [2, 3])
  with pytest.raises(ValueError, match="not divisible"):
    pipeline.shard(b, 3)


def test_validate_examples_errors():
  ex = _coded_examples(np.arange(5))
  pipeline.validate_examples(ex, 4)
  with pytest.raises(ValueError, match="'train' is empty"):
    pipeline.validate_examples(ex.subset(np.zeros(0, np.int64)), 4, name="train")
  with pytest.raises(ValueError, match="width 4"):
    pipeline.validate_examples(ex, 10)
  bad = sources.Examples(ex.images, ex.labels * 2, ex.ids)
  with pytest.raises(ValueError, match="0/1"):
    pipeline.validate_examples(bad, 4)


def test_load_splits_digits_meta_and_rerun(tmp_path):
  from configs import digits_demo

  c = digits_demo.get_config()
  out, meta = pipeline.load_splits(c, str(tmp_path))
  assert {k: len(v) for k, v in out.items()} == meta["counts"]
  assert meta["protocol"] == "digits" and meta["split_seed"] == 0 and meta["num_skipped"] == 0
  assert set(meta["split_sha256"]) == {"query", "train_labeled", "train_unlabeled", "database", "validation"}
  assert os.path.exists(tmp_path / "splits" / "splits.json")
  out2, meta2 = pipeline.load_splits(c, str(tmp_path))
  assert meta2["split_hash"] == meta["split_hash"]
  np.testing.assert_array_equal(out["query"].images, out2["query"].images)
  c.data.split_seed = 1
  with pytest.raises(ValueError, match="split_seed"):
    pipeline.load_splits(c, str(tmp_path))
  c.data.split_dir = str(tmp_path / "other")
  _, meta3 = pipeline.load_splits(c, str(tmp_path))
  assert meta3["split_hash"] != meta["split_hash"]
  c.data.num_classes = 5
  with pytest.raises(ValueError, match="10 classes"):
    pipeline.load_splits(c, str(tmp_path))


def test_load_splits_folder_with_corrupt_file(tmp_path):
  """Digits written as PNG files + one truncated JPEG: error before training, or skipped and counted."""
  from configs import digits_demo

  dig = sources.digits()
  root = tmp_path / "digits"
  for i, (im, y) in enumerate(zip(dig.images, dig.labels.argmax(1))):
    d = root / "all" / f"c{y}"
    d.mkdir(parents=True, exist_ok=True)
    Image.fromarray(im).save(d / f"{i:04d}.png")
  with open(root / "all" / "c3" / "9999.jpg", "wb") as f:
    f.write(b"\xff\xd8\xff\xe0 truncated")
  c = digits_demo.get_config()
  c.data.source, c.data.manual_dir = "folder", str(root)
  with pytest.raises(ValueError, match=r"c3/9999\.jpg"):
    pipeline.load_splits(c, str(tmp_path / "run"))
  c.data.on_bad_image = "skip"
  out, meta = pipeline.load_splits(c, str(tmp_path / "run"))
  assert meta["num_skipped"] == 1 and meta["skipped"][0]["file"].endswith("9999.jpg")
  assert meta["pool_size"] == 1797 and sum(meta["counts"].values()) > 0
  # The folder pool is the digits data set (row order: class folder, then file name = digits index).
  rels = sources.scan_image_folder(str(root))[0]
  for k in ("query", "train_labeled"):
    digit_index = np.asarray([int(os.path.basename(rels[i])[:4]) for i in out[k].ids])
    np.testing.assert_array_equal(out[k].images, dig.images[digit_index])
    np.testing.assert_array_equal(out[k].labels, dig.labels[digit_index])
  assert os.path.exists(tmp_path / "run" / "splits" / "skipped.json")
  # Without the junk file the splits hold the same images and the split hash is the same, although the ids
  # of every file sorted after it moved down by one.
  os.remove(root / "all" / "c3" / "9999.jpg")
  clean, meta_clean = pipeline.load_splits(c, str(tmp_path / "run_clean"))
  assert meta_clean["num_skipped"] == 0 and meta_clean["split_hash"] == meta["split_hash"]
  assert meta_clean["pool_fingerprint"] != meta["pool_fingerprint"]
  for k in out:
    np.testing.assert_array_equal(clean[k].images, out[k].images)
  assert not np.array_equal(clean["database"].ids, out["database"].ids)


def test_load_splits_with_pool_argument(tmp_path):
  c = default.get_config()
  c.data.source, c.data.protocol = "arrays", "digits"
  ex = sources.digits()
  out, _ = pipeline.load_splits(c, str(tmp_path), pool=ex)
  assert len(out["database"]) == 1697
  with pytest.raises(ValueError, match="arrays_path"):
    pipeline.load_splits(c, str(tmp_path / "x"))
  cfg = ml_collections.ConfigDict({"data": c.data.to_dict()})
  assert pipeline._data_cfg(cfg) is cfg.data


def test_in_memory_images_smaller_than_the_input_size_are_refused(tmp_path):
  c = default.get_config()
  c.data.source, c.data.protocol = "arrays", "digits"
  c.data.image_size = 16  # digits are 8x8
  with pytest.raises(ValueError, match=r"images are 8x8, smaller than data.image_size=16"):
    pipeline.load_splits(c, str(tmp_path), pool=sources.digits())
  c.data.resize_size = 16  # resized alike for training and evaluation: accepted
  out, _ = pipeline.load_splits(c, str(tmp_path / "ok"), pool=sources.digits())
  assert len(out["query"]) > 0
