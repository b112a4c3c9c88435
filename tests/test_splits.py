"""Tests for ssdh_jax.data.splits: protocol sizes, class balance, disjointness, seeding, split files.

Expected sizes come from ../shared/docs/protocols.md (and the digits demo's spec), and every invariant is
recomputed here with plain numpy / set operations rather than through `check_splits`.
"""

import hashlib
import json
import os

import numpy as np
import pytest

from ssdh_jax.data import splits


def _single_label_pool(per_class, num_classes, rng, origin_counts=None):
  """One-hot labels (shuffled rows) with `per_class` rows of each class; optional origin per row."""
  classes = np.repeat(np.arange(num_classes), per_class)
  origin = None
  if origin_counts is not None:
    origin = np.concatenate([np.full(n, name) for name, n in origin_counts] * num_classes)
  perm = rng.permutation(len(classes))
  labels = np.eye(num_classes, dtype=np.float32)[classes[perm]]
  return labels, (None if origin is None else origin[perm])


def _multi_label_pool(n, num_classes, rng, p=0.15, empty_rows=0):
  labels = (rng.random((n, num_classes)) < p).astype(np.float32)
  labels[labels.sum(1) == 0, rng.integers(0, num_classes)] = 1  # every row labelled ...
  labels[:empty_rows] = 0  # ... except the first `empty_rows`
  return labels


def _sets(s):
  return {k: set(v.tolist()) for k, v in s.items()}


def _assert_disjoint_core(st):
  for a, b in [
    ("query", "train_labeled"),
    ("query", "validation"),
    ("train_labeled", "validation"),
    ("train_unlabeled", "query"),
    ("train_unlabeled", "train_labeled"),
    ("train_unlabeled", "validation"),
    ("database", "query"),
  ]:
    assert not st[a] & st[b], (a, b)


def test_cifar10_protocol():
  rng = np.random.default_rng(0)
  labels, _ = _single_label_pool(6000, 10, rng)
  s = splits.make_splits(labels, "cifar10", seed=0)
  st = _sets(s)
  counts = {k: len(v) for k, v in s.items()}
  assert counts == {
    "query": 1000,
    "train_labeled": 5000,
    "database": 54000,
    "train_unlabeled": 53500,
    "validation": 500,
  }
  cls = labels.argmax(1)
  np.testing.assert_array_equal(np.bincount(cls[s["query"]], minlength=10), 100)
  np.testing.assert_array_equal(np.bincount(cls[s["train_labeled"]], minlength=10), 500)
  np.testing.assert_array_equal(np.bincount(cls[s["validation"]], minlength=10), 50)
  _assert_disjoint_core(st)
  # database = everything except queries and labeled images; it is also the unlabeled pool (+ validation).
  assert st["database"] == set(range(60000)) - st["query"] - st["train_labeled"]
  assert st["train_unlabeled"] | st["validation"] == st["database"]
  for v in s.values():
    assert np.all(np.diff(v) > 0)  # sorted, unique


def test_cifar10_1_protocol():
  labels, _ = _single_label_pool(6000, 10, np.random.default_rng(1))
  s = splits.make_splits(labels, "cifar10-1", seed=3)
  st = _sets(s)
  assert len(s["query"]) == 1000 and len(s["database"]) == 59000 and len(s["train_labeled"]) == 5000
  assert st["database"] == set(range(60000)) - st["query"]
  assert st["train_labeled"] <= st["database"]
  assert st["train_unlabeled"] == st["database"] - st["train_labeled"] - st["validation"]
  _assert_disjoint_core(st)
  np.testing.assert_array_equal(np.bincount(labels.argmax(1)[s["train_labeled"]], minlength=10), 500)


def test_cifar10_2_official_split():
  rng = np.random.default_rng(2)
  labels, origin = _single_label_pool(6000, 10, rng, [("train", 5000), ("test", 1000)])
  s = splits.make_splits(labels, "cifar10-2", seed=0, origin=origin)
  test_rows, train_rows = np.flatnonzero(origin == "test"), np.flatnonzero(origin == "train")
  np.testing.assert_array_equal(s["query"], test_rows)
  np.testing.assert_array_equal(s["database"], train_rows)
  assert len(s["train_unlabeled"]) == 0
  # Validation is carved from the 50,000 labeled images (no unlabeled pool to draw from).
  assert len(s["validation"]) == 500 and len(s["train_labeled"]) == 49500
  assert set(s["train_labeled"].tolist()) | set(s["validation"].tolist()) == set(train_rows.tolist())
  with pytest.raises(ValueError, match="official"):
    splits.make_splits(labels, "cifar10-2", seed=0)


def test_digits_protocol_on_real_digits():
  from sklearn.datasets import load_digits

  target = load_digits().target
  labels = np.eye(10, dtype=np.float32)[target]
  s = splits.make_splits(labels, "digits", seed=0)
  assert {k: len(v) for k, v in s.items()} == {
    "query": 100,
    "train_labeled": 300,
    "validation": 100,
    "database": 1697,
    "train_unlabeled": 1297,
  }
  for k, n in (("query", 10), ("train_labeled", 30), ("validation", 10)):
    np.testing.assert_array_equal(np.bincount(target[s[k]], minlength=10), n)
  st = _sets(s)
  _assert_disjoint_core(st)
  assert st["database"] == set(range(1797)) - st["query"]


def test_nuswide21_multilabel_balance():
  rng = np.random.default_rng(4)
  labels = _multi_label_pool(40000, 21, rng)
  s = splits.make_splits(labels, "nuswide-21", seed=0)
  st = _sets(s)
  assert len(s["query"]) == 2100 and len(s["train_labeled"]) == 10500 and len(s["validation"]) == 1050
  assert st["database"] == set(range(40000)) - st["query"]
  assert st["train_labeled"] <= st["database"]
  _assert_disjoint_core(st)
  # Every label has at least n/C members in each balanced split.
  assert (labels[s["query"]].sum(0) >= 100).all()
  assert (labels[s["train_labeled"]].sum(0) >= 500).all()
  assert (labels[s["validation"]].sum(0) >= 50).all()


def test_mirflickr_unlabeled_rows_never_queried():
  rng = np.random.default_rng(5)
  labels = _multi_label_pool(25000, 38, rng, empty_rows=300)
  s = splits.make_splits(labels, "mirflickr-25k", seed=1)
  assert len(s["query"]) == 1000 and len(s["train_labeled"]) == 5000
  assert len(s["database"]) == 19000  # the rest = the unlabeled pool
  st = _sets(s)
  assert st["database"] == set(range(25000)) - st["query"] - st["train_labeled"]
  empty = set(range(300))
  assert not empty & (st["query"] | st["train_labeled"] | st["validation"])
  assert empty <= st["train_unlabeled"]


def test_coco_and_imagenet_origin():
  rng = np.random.default_rng(6)
  s = splits.make_splits(_multi_label_pool(30000, 80, rng, p=0.05), "coco", seed=0)
  assert len(s["database"]) == 25000 and set(s["train_labeled"].tolist()) <= set(s["database"].tolist())
  labels, origin = _single_label_pool(260, 100, rng, [("database", 200), ("val", 60)])
  s = splits.make_splits(labels, "imagenet-100", seed=0, origin=origin)
  assert (origin[s["query"]] == "val").all() and len(s["query"]) == 5000
  np.testing.assert_array_equal(np.bincount(labels.argmax(1)[s["train_labeled"]], minlength=100), 130)


def test_seed_determinism_and_stage_independence():
  labels, _ = _single_label_pool(6000, 10, np.random.default_rng(7))
  a = splits.make_splits(labels, "cifar10", seed=11)
  b = splits.make_splits(labels, "cifar10", seed=11)
  c = splits.make_splits(labels, "cifar10", seed=12)
  for k in splits.SPLIT_NAMES:
    np.testing.assert_array_equal(a[k], b[k])
  ha, hb, hc = (splits.split_hashes(x) for x in (a, b, c))
  assert ha == hb
  assert ha[1] != hc[1] and all(ha[0][k] != hc[0][k] for k in ("query", "train_labeled", "validation"))
  # A different validation size leaves queries and labeled images where they were.
  d = splits.make_splits(labels, "cifar10", seed=11, val_size=1000)
  np.testing.assert_array_equal(a["query"], d["query"])
  np.testing.assert_array_equal(a["train_labeled"], d["train_labeled"])
  assert len(d["validation"]) == 1000


def test_val_from_labeled_carves():
  labels, _ = _single_label_pool(6000, 10, np.random.default_rng(8))
  s = splits.make_splits(labels, "cifar10", seed=0, val_from="labeled", val_size=1000)
  assert len(s["train_labeled"]) == 4000 and len(s["validation"]) == 1000
  cls = labels.argmax(1)
  np.testing.assert_array_equal(np.bincount(cls[s["train_labeled"]], minlength=10), 400)
  # Carved validation images are not in the database (cifar10's database excludes the labeled 5,000) and are
  # not trained on without labels either.
  st = _sets(s)
  assert not st["validation"] & st["database"] and not st["validation"] & st["train_unlabeled"]
  splits.check_splits(s, labels, "cifar10", val_from="labeled", val_size=1000)


def test_check_splits_catches_violations():
  labels, _ = _single_label_pool(6000, 10, np.random.default_rng(9))
  s = splits.make_splits(labels, "cifar10", seed=0)
  splits.check_splits(s, labels, "cifar10")
  leaked = dict(s, train_labeled=np.sort(np.append(s["train_labeled"], s["query"][0])))
  with pytest.raises(AssertionError, match="query and train_labeled"):
    splits.check_splits(leaked, labels, "cifar10")
  # Swap one labeled image for an unlabeled one of another class: sizes and disjointness hold, balance breaks.
  s1 = splits.make_splits(labels, "cifar10-1", seed=0)
  cls = labels.argmax(1)
  lab, unl = s1["train_labeled"].copy(), s1["train_unlabeled"]
  other = unl[cls[unl] != cls[lab[0]]][0]
  unl = np.sort(np.append(np.setdiff1d(unl, [other]), lab[0]))
  lab[0] = other
  unbalanced = dict(s1, train_labeled=np.sort(lab), train_unlabeled=unl)
  with pytest.raises(AssertionError, match="labeled: class"):
    splits.check_splits(unbalanced, labels, "cifar10-1")
  short = dict(s, query=s["query"][1:])
  with pytest.raises(AssertionError, match="query has 999"):
    splits.check_splits(short, labels, "cifar10")


def test_errors_for_impossible_pools():
  labels, _ = _single_label_pool(50, 10, np.random.default_rng(10))
  with pytest.raises(ValueError, match="class"):
    splits.make_splits(labels, "cifar10", seed=0)
  with pytest.raises(ValueError, match="classes"):
    splits.make_splits(np.zeros((10, 3), np.float32), "cifar10", seed=0)
  with pytest.raises(ValueError, match="unknown protocol"):
    splits.get_protocol("cifar100")


def test_split_files_roundtrip_hashes_and_mismatch(tmp_path):
  labels, _ = _single_label_pool(180, 10, np.random.default_rng(11))
  ids = np.arange(1000, 1000 + len(labels))
  d = str(tmp_path / "splits")
  rows, meta = splits.get_splits(labels, ids, "digits", 5, split_dir=d)
  # Independent hash: sha256 of the file bytes; file content = sorted ids of the split, one per line.
  for k in splits.SPLIT_NAMES:
    with open(os.path.join(d, f"{k}.txt"), "rb") as f:
      data = f.read()
    assert hashlib.sha256(data).hexdigest() == meta["split_sha256"][k]
    assert [int(t) for t in data.split()] == sorted(ids[rows[k]].tolist())
  # The split hash is over pool rows (ids here are rows + 1000): sha256 of `<split> <sha256 of its rows>`.
  row_sha = {k: hashlib.sha256("".join(f"{r}\n" for r in rows[k]).encode()).hexdigest() for k in rows}
  combined = "".join(f"{k} {row_sha[k]}\n" for k in splits.SPLIT_NAMES)
  assert meta["split_hash"] == hashlib.sha256(combined.encode()).hexdigest()
  assert row_sha["query"] != meta["split_sha256"]["query"]
  with open(os.path.join(d, "splits.json")) as f:
    assert json.load(f)["split_hash"] == meta["split_hash"]

  rows2, meta2 = splits.get_splits(labels, ids, "digits", 5, split_dir=d)  # read back, not redrawn
  assert meta2["split_hash"] == meta["split_hash"]
  for k in splits.SPLIT_NAMES:
    np.testing.assert_array_equal(rows[k], rows2[k])
  with pytest.raises(ValueError, match="split_seed"):
    splits.get_splits(labels, ids, "digits", 6, split_dir=d)
  with pytest.raises(ValueError, match="pool_fingerprint"):
    splits.get_splits(labels[::-1].copy(), ids, "digits", 5, split_dir=d)
  with open(os.path.join(d, "query.txt"), "a") as f:
    f.write("1\n")
  with pytest.raises(ValueError, match="does not match"):
    splits.get_splits(labels, ids, "digits", 5, split_dir=d)


def test_protocol_table_matches_docs():
  p = splits.PROTOCOLS
  assert (p["cifar10"].num_query, p["cifar10"].num_labeled, p["cifar10"].database_size) == (1000, 5000, 54000)
  assert p["cifar10-1"].database_size == 59000 and p["cifar10-1"].labeled_in_database
  assert (p["cifar10-2"].num_query, p["cifar10-2"].database_size) == (10000, 50000)
  assert (p["nuswide-21"].num_query, p["nuswide-21"].num_labeled, p["nuswide-21"].database_size) == (
    2100,
    10500,
    193734,
  )
  assert (
    p["nuswide-21"].metric_r == 5000 and p["imagenet-100"].metric_r == 1000 and p["coco"].metric_r == 5000
  )
  assert (p["mirflickr-25k"].num_classes, p["mirflickr-25k"].database_size) == (38, 19000)
  assert p["imagenet-100"].num_query == 5000 and 10000 <= p["imagenet-100"].num_labeled <= 13000
  assert (p["coco"].num_query, p["coco"].num_labeled) == (5000, 10000)


def test_custom_protocol_from_a_string():
  p = splits.get_protocol("custom:query=4,labeled=10,val=2,balanced=1,r=5", num_classes=2)
  assert (p.num_query, p.num_labeled, p.val_size, p.balanced, p.labeled_in_database, p.metric_r) == (
    4, 10, 2, True, True, 5
  )  # fmt: skip
  assert (
    p.name == "custom:query=4,labeled=10,val=2,balanced=1,r=5" and p.num_classes == 2 and not p.multi_label
  )
  for bad, says in (
    ("custom:query=4", "query and labeled"),
    ("custom:query=4,labeled=x", "bad item"),
    ("custom:queries=4,labeled=2", "bad item"),
  ):
    with pytest.raises(ValueError, match=says):
      splits.get_protocol(bad, num_classes=2)
  with pytest.raises(ValueError, match=r"needs data\.num_classes"):
    splits.get_protocol("custom:query=1,labeled=1")
