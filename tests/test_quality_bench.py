"""bench/quality.py: the grid harness's wiring (configs per method, resumable rows, table, unpacking).

Training itself is covered by test_train_lib; here train_and_evaluate is replaced by a recorder.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import io
import json
import os
import shlex
import tarfile

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def quality():
  spec = importlib.util.spec_from_file_location("quality_bench", os.path.join(ROOT, "bench", "quality.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def quick_args(tmp_path, **kw) -> argparse.Namespace:
  base = dict(
    quick=True, full=False, steps=7, width=8, data_dir=str(tmp_path / "data"), split_seed=3,
    workdir=str(tmp_path / "runs"), mobilenet_weights="", feature_size=64, pretrained=False,
    image_size=160, trainable="features_18", e2e=False, e2e_steps=100, e2e_batch=64,
  )  # fmt: skip
  base.update(kw)
  return argparse.Namespace(**base)


@pytest.mark.parametrize(
  "method,lam,unlabeled,loss",
  [("ssdh", 0.1, True, "ssdh"), ("supervised", 0.0, False, "ssdh"), ("dpsh", 0.1, False, "dpsh")],
)
def test_train_method_configures_each_baseline(quality, tmp_path, monkeypatch, method, lam, unlabeled, loss):
  from ssdh_jax import train_lib

  seen = {}

  def fake_train(config, workdir):
    seen["config"] = config
    os.makedirs(workdir)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
      for ips, purity in ((5.0, 0.1), (100.0, 0.2), (120.0, 0.3), (110.0, 0.6)):  # window 1 (compile) dropped
        f.write(json.dumps({"step": 1, "images_per_sec": ips, "graph_purity": purity}) + "\n")
      f.write(json.dumps({"step": 1, "val_map": 0.2}) + "\n")
    return {"metrics": {"map": 0.25, "precision_radius": 0.5}, "key": {"split_hash": "abc123"}}

  monkeypatch.setattr(train_lib, "train_and_evaluate", fake_train)
  row = quality.train_method(quick_args(tmp_path), method, 48, 2, "small_cnn")
  c = seen["config"]
  assert c.is_locked
  assert (c.loss.lam, c.data.include_unlabeled, c.loss.name) == (lam, unlabeled, loss)
  assert (c.seed, c.model.bits, c.model.width, c.train.num_steps, c.data.split_seed) == (2, 48, 8, 7, 3)
  assert c.data.protocol == "cifar10" and c.data.manual_dir == str(tmp_path / "data")
  assert (
    row["images_per_sec"] == 110.0
    and row["graph_purity"] == 0.6
    and row["map"] == 0.25
    and row["split_hash"] == "abc123"
  )
  assert row["command"].startswith("python train.py --config configs/cifar10_small_cnn.py:48 ")
  assert row["command"].endswith(f"--workdir {tmp_path / 'runs' / f'small_cnn_{method}_48b_s2'}")


@pytest.mark.parametrize("method", ["ssdh", "supervised", "dpsh"])
def test_train_command_rebuilds_the_same_config(quality, tmp_path, method):
  """Applying the printed --config.* flags to the config file gives back the cell's config."""
  from configs import cifar10_small_cnn

  args = quick_args(tmp_path)
  want = quality.method_config(args, method, 12, 1, "small_cnn")
  cmd = shlex.split(quality.train_command(want, "small_cnn", 12, "/w"))
  got = cifar10_small_cnn.get_config("12")
  for flag in cmd:
    if flag.startswith("--config."):
      key, value = flag[len("--config.") :].split("=", 1)
      *parents, leaf = key.split(".")
      node = got
      for p in parents:
        node = node[p]
      cur = node[leaf]
      node[leaf] = (
        value == "True"
        if isinstance(cur, bool)
        else type(cur)(ast.literal_eval(value) if isinstance(cur, tuple) else value)
      )
  got.train.progress = want.train.progress
  assert got.to_dict() == want.to_dict()


def test_rows_resume_and_bad_row_named(quality, tmp_path):
  path = tmp_path / "rows.jsonl"
  assert quality._load_rows(str(path)) == {}
  row = {"method": "ssdh", "bits": 12, "seed": 1, "backbone": "small_cnn", "steps": 500, "width": 32}
  path.write_text(json.dumps(row) + "\n")
  assert quality._load_rows(str(path)) == {("ssdh", 12, 1, "small_cnn", 500, 32): row}
  path.write_text(json.dumps(row) + "\n{not json\n")
  with pytest.raises(ValueError, match=r"rows\.jsonl:2"):
    quality._load_rows(str(path))


def test_table_reports_mean_and_sample_std(quality):
  maps = [0.40, 0.46, 0.43]
  rows = [
    {"method": "ssdh", "bits": 48, "backbone": "small_cnn", "seed": s, "map": m, "p_h2": 0.1, "wall_s": 1.0,
     "images_per_sec": 2.0, "steps": 5, "split_hash": "0123456789abcdef", "command": "python x"}
    for s, m in enumerate(maps)
  ]  # fmt: skip
  text = quality.table(rows, "## header")
  assert text.startswith("## header")
  assert "| 0123456789ab |" in text and "0123456789abc" not in text
  expected = f"| ssdh | 48 | small_cnn | 3 | {np.mean(maps):.4f} ± {np.std(maps, ddof=1):.4f} |"
  assert expected in text


def test_unpack_moves_nested_folder_and_names_missing_archive(quality, tmp_path):
  archive = tmp_path / "c.tar.xz"
  with tarfile.open(archive, "w:xz") as tar:
    for name in ("cifar/train/cat/0.jpg", "cifar/test/dog/1.jpg"):
      info = tarfile.TarInfo(name)
      info.size = 3
      tar.addfile(info, io.BytesIO(b"abc"))
  dest = quality.unpack_cifar10(str(archive), str(tmp_path / "out"))
  assert os.path.exists(os.path.join(dest, "train", "cat", "0.jpg"))
  assert os.path.exists(os.path.join(dest, "test", "dog", "1.jpg"))
  with pytest.raises(FileNotFoundError, match=r"nope\.tar\.xz"):
    quality.unpack_cifar10(str(tmp_path / "nope.tar.xz"), str(tmp_path / "other"))


def _row(method: str, seed: int, m: float) -> dict:
  return {"method": method, "bits": 12, "backbone": "small_cnn", "seed": seed, "map": m, "p_h2": 0.2,
          "wall_s": 10.0, "images_per_sec": 200.0, "steps": 5, "split_hash": "ab", "command": "c"}  # fmt: skip


def test_summary_pairs_ssdh_with_supervised_by_seed(quality):
  ssdh, sup = [0.40, 0.46, 0.43], [0.30, 0.31, 0.35]
  rows = [_row("ssdh", s, m) for s, m in enumerate(ssdh)] + [
    _row("supervised", s, m) for s, m in enumerate(sup)
  ]
  rows.append(_row("supervised", 7, 0.9))  # a seed SSDH lacks is not paired
  text = "\n".join(quality.summary(rows))
  gaps = np.subtract(ssdh, sup)
  spread = max(np.std(ssdh, ddof=1), np.std(sup, ddof=1))
  assert (
    f"| ssdh | supervised | 12 | small_cnn | 3 | {gaps.mean():.4f} ± {gaps.std(ddof=1):.4f} | {spread:.4f} | yes |"
    in text
  )
  flipped = [dict(r, method={"ssdh": "supervised", "supervised": "ssdh"}[r["method"]]) for r in rows[:6]]
  assert "| no |" in "\n".join(quality.summary(flipped))
  assert "no (one seed)" in "\n".join(quality.summary([_row("ssdh", 0, 0.5), _row("supervised", 0, 0.4)]))
  # The class-agreement remedy is paired with plain supervised-only and with its own control (+ L_cls).
  agree = [_row("ssdh_agree", s, 0.5) for s in range(2)] + [_row("supervised_cls", s, 0.45) for s in range(2)]
  text = "\n".join(quality.summary(rows + agree))
  assert "| ssdh_agree | supervised | 12 |" in text and "| ssdh_agree | supervised_cls | 12 |" in text
  assert "| ssdh | supervised_cls |" not in text


def test_finished_grid_is_not_rerun(quality, tmp_path, monkeypatch):
  """With every cell in rows.jsonl, main() only rebuilds the table: no training, no feature extraction."""
  data = tmp_path / "data"
  data.mkdir()
  (data / ".complete").touch()
  work = tmp_path / "runs"
  work.mkdir()
  fbb = "mobilenet_v2 ImageNet features @64px (fixed)"
  cells = [("itq", 12, 0, fbb, 0, 0)]
  cells += [(m, 12, s, "small_cnn", 5, 8) for s in range(2) for m in ("ssdh", "supervised")]
  with open(work / "rows.jsonl", "w") as f:
    for m, b, s, bb, steps, w in cells:
      row = _row(m, s, 0.3 + 0.01 * s) | {"bits": b, "backbone": bb, "steps": steps, "width": w}
      f.write(json.dumps(row) + "\n")

  def refuse(*a, **k):
    raise AssertionError("a finished cell was run again")

  monkeypatch.setattr(quality, "train_method", refuse)
  monkeypatch.setattr(quality, "backbone_features", refuse)
  out = tmp_path / "table.md"
  quality.main(
    ["--quick", "--steps", "5", "--width", "8", "--bits", "12", "--seeds", "2", "--methods", "ssdh,supervised,itq",
     "--data-dir", str(data), "--workdir", str(work), "--mobilenet-weights", "unused.pth", "--out", str(out)]
  )  # fmt: skip
  text = out.read_text()
  assert text.count("| ssdh | 12 | small_cnn |") == 3  # two seed rows and the summary row
  assert text.count("| ssdh | supervised | 12 | small_cnn | 2 |") == 1  # the paired gap
  assert "--config.model.width=8" in text  # commands are rebuilt for rows from older script versions
  assert "Grid wall time: 5 runs, 1 min summed over the rows' wall_s = 0.01 h." in text
  assert len((work / "rows.jsonl").read_text().splitlines()) == len(cells)


def test_pretrained_mode_cells(quality, tmp_path):
  """--pretrained: every trained cell fine-tunes the same partly frozen MobileNetV2 at --image-size with the
  frozen prefix cached; the remedies differ from SSDH in exactly their one setting; the e2e cell trains all."""
  from ssdh_jax import train_lib

  mod = quality
  args = quick_args(
    tmp_path, quick=False, pretrained=True, steps=40, image_size=96, mobilenet_weights="w.pth"
  )
  base = mod.method_config(args, "ssdh", 48, 1, "mobilenet_v2")
  assert (base.data.image_size, base.data.resize_size, base.data.augment) == (96, 96, "none")
  assert base.model.trainable == "features_18" and base.model.pretrained == "w.pth"
  assert base.train.num_steps == 40 and base.train.term_grad_norms > 0
  assert train_lib.cached_prefix_layer(base) == 18
  flat = lambda c: mod._flat(c.to_dict())
  for method, field_value in {
    "ssdh_features": ("loss.graph_feature", "features"),  # (field, value, field, value, ...)
    "ssdh_release": ("loss.variant", "multi_label"),
    "ssdh_ramp": ("loss.lam_rampup_steps", 20),
    # The shipped CPU config trains the class head already (loss.cls_in_single_label=True): not a difference.
    "ssdh_agree": ("loss.graph_filter", "class_agree"),
    "supervised_cls": ("loss.lam", 0.0, "data.include_unlabeled", False),
    "ssdh_lam0": ("loss.lam", 0.0),
    "ssdh_b2x": ("train.batch_size", 256),
  }.items():
    diff = {
      k: v
      for k, v in flat(mod.method_config(args, method, 48, 1, "mobilenet_v2")).items()
      if flat(base)[k] != v
    }
    assert diff == dict(zip(field_value[::2], field_value[1::2])), method
  e2e = mod.method_config(args, mod.E2E, 48, 0, "mobilenet_v2")
  assert e2e.model.trainable == "all" and train_lib.cached_prefix_layer(e2e) == 0
  assert e2e.train.batch_size == 64 and e2e.train.num_steps == 100
  assert mod.backbone_label(args, "mobilenet_v2") != mod.backbone_label(args, "mobilenet_v2", "all")
  cmd = mod.train_command(base, "mobilenet_v2_cpu", 48, "/tmp/x")
  assert "configs/cifar10_mobilenet_v2_cpu.py:48" in cmd and "--config.data.image_size=96" in cmd
