"""Label-scarce runs (`data.num_labeled`): fewer labeled images, the same queries, database and validation."""

import numpy as np
import pytest

from configs import digits_demo
from ssdh_jax import config_checks, evaluate
from ssdh_jax.data import pipeline


def _splits(tmp_path, num_labeled=0):
  c = digits_demo.get_config("16")
  c.data.num_labeled = num_labeled
  return pipeline.load_splits(c, str(tmp_path))


def test_subset_is_balanced_nested_and_leaves_the_scored_splits_alone(tmp_path):
  full, _ = _splits(tmp_path / "a")
  few, meta = _splits(tmp_path / "b", 50)
  fewer, _ = _splits(tmp_path / "c", 20)
  for name in ("query", "database", "validation"):
    np.testing.assert_array_equal(few[name].ids, full[name].ids)
  lab, full_lab = few["train_labeled"], full["train_labeled"]
  assert len(lab) == 50 and set(lab.ids) <= set(full_lab.ids)
  np.testing.assert_array_equal(np.bincount(lab.labels.argmax(1), minlength=10), np.full(10, 5))
  assert set(fewer["train_labeled"].ids) <= set(lab.ids)  # nested: the 20 are among the 50
  # Every labeled image left out is now unlabeled training data; nothing is lost or duplicated.
  moved = set(full_lab.ids) - set(lab.ids)
  assert set(few["train_unlabeled"].ids) == set(full["train_unlabeled"].ids) | moved
  assert len(few["train_unlabeled"]) == len(full["train_unlabeled"]) + len(moved)
  row = {i: k for k, i in enumerate(few["train_unlabeled"].ids)}
  full_row = {i: k for k, i in enumerate(full_lab.ids)}
  for i in list(moved)[:5]:  # moved rows keep their images
    np.testing.assert_array_equal(few["train_unlabeled"].images[row[i]], full_lab.images[full_row[i]])
  assert meta["labeled_subset"]["num_labeled"] == 50 and len(meta["labeled_subset"]["ids_sha256"]) == 64
  again, meta2 = _splits(tmp_path / "d", 50)
  np.testing.assert_array_equal(again["train_labeled"].ids, lab.ids)  # a function of the split seed
  assert meta2["labeled_subset"] == meta["labeled_subset"]


def test_bad_counts_are_refused(tmp_path):
  with pytest.raises(ValueError, match=r"config\.data\.num_labeled: 300 is not below"):
    _splits(tmp_path, 300)
  c = digits_demo.get_config("16")
  c.data.num_labeled = -1
  with pytest.raises(ValueError, match=r"config\.data\.num_labeled"):
    config_checks.check_config(c)


def test_reports_name_the_label_count():
  res = {"key": {"protocol": "cifar10", "split_hash": "abc", "bits": 48, "backbone": "b", "loss": "ssdh",
                 "R_label": "all", "checkpoint_step": 1, "seed": 0, "num_labeled": 1000},
         "metrics": {"map": 0.5}}  # fmt: skip
  assert "| cifar10 (1000 labels) |" in evaluate.markdown_table([res])
  res["key"]["num_labeled"] = None
  assert "| cifar10 |" in evaluate.markdown_table([res])
