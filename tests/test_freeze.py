"""Frozen / partly trainable backbones (model.trainable), the frozen-prefix feature cache and per-term
gradient diagnostics."""

import glob
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import digits_demo
from ssdh_jax import feature_cache, mesh, models, optim, train_lib
from ssdh_jax.data import pipeline

MNV2 = {"name": "mobilenet_v2", "bits": 8, "num_classes": 3}


def _leaf_paths(tree):
  return {
    "/".join(str(getattr(k, "key", k)) for k in p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)
  }


def _abstract_params(model_cfg, size=32):
  model = models.build_model(model_cfg)
  return models.variable_shapes(model, size)["params"]


def test_trainable_mask_selects_layers_and_heads():
  params = _abstract_params(MNV2)
  layers = models.backbone_layers("mobilenet_v2")
  mask = optim.trainable_mask(params, "features_14", layers)
  assert all(jax.tree.leaves(mask["hash"])) and all(jax.tree.leaves(mask["classifier"]))
  for i, name in enumerate(layers):
    assert set(jax.tree.leaves(mask["backbone"][name])) == {i >= 14}, name
  heads = optim.trainable_mask(params, "heads", layers)
  assert not any(jax.tree.leaves(heads["backbone"])) and all(jax.tree.leaves(heads["hash"]))
  assert all(jax.tree.leaves(optim.trainable_mask(params, "all", layers)))
  train, frozen = optim.split_params(params, mask)
  assert "features_13" in frozen["backbone"] and "features_13" not in train["backbone"]
  merged = optim.merge_params(train, frozen)
  assert jax.tree.structure(merged) == jax.tree.structure(params)


@pytest.mark.parametrize("spec", ["features_99", "conv1", ""])
def test_trainable_mask_rejects_unknown_layer(spec):
  with pytest.raises(ValueError, match=r"config\.model\.trainable"):
    optim.trainable_mask(_abstract_params(MNV2), spec, models.backbone_layers("mobilenet_v2"))


def test_layer_names_rejected_for_backbones_without_a_layer_list():
  with pytest.raises(ValueError, match=r"supports only all \| heads"):
    models.first_trainable_layer({"name": "small_cnn", "trainable": "conv1_1"})


@pytest.mark.parametrize("trainable", ["features_14", "heads"])
def test_prefix_then_suffix_equals_full_model(trainable):
  cfg = dict(MNV2, trainable=trainable)
  model = models.build_model(cfg)
  variables = models.init_variables(model, jax.random.PRNGKey(1), 32)
  # Non-trivial BatchNorm statistics so that inference mode is really exercised.
  variables["batch_stats"] = jax.tree.map(
    lambda x: x + 0.3 * jax.random.uniform(jax.random.PRNGKey(2), x.shape), variables["batch_stats"]
  )
  x = jax.random.normal(jax.random.PRNGKey(3), (3, 32, 32, 3))
  full = model.apply(variables, x, train=False)
  prefix, layer = models.build_prefix(cfg)
  acts = prefix.apply(
    {"params": variables["params"]["backbone"], "batch_stats": variables["batch_stats"]["backbone"]}, x
  )
  suffix = models.build_model(cfg, input_layer=layer)
  out = suffix.apply(variables, acts, train=False)
  np.testing.assert_allclose(out["codes"], full["codes"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out["features"], full["features"], rtol=1e-5, atol=1e-5)


def test_frozen_layers_keep_batchnorm_statistics_in_training():
  cfg = dict(MNV2, trainable="features_16")
  model = models.build_model(cfg)
  variables = models.init_variables(model, jax.random.PRNGKey(1), 32)
  x = jax.random.normal(jax.random.PRNGKey(3), (4, 32, 32, 3))
  _, mutated = model.apply(
    variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)}
  )
  before, after = variables["batch_stats"]["backbone"], mutated["batch_stats"]["backbone"]
  for i, name in enumerate(models.backbone_layers("mobilenet_v2")):
    same = all(
      bool(jnp.all(a == b)) for a, b in zip(jax.tree.leaves(before[name]), jax.tree.leaves(after[name]))
    )
    assert same == (i < 16), name


def _digits_config(steps=4, **model):
  c = digits_demo.get_config("16")
  c.train.num_steps = steps
  c.train.batch_size = 32
  c.train.log_every = 2
  c.train.eval_every = 0
  c.train.checkpoint_every = steps
  c.train.progress = False
  c.train.async_checkpoint = False
  c.model.width = 8
  c.eval.val_queries = 50
  c.eval.val_database = 200
  for k, v in model.items():
    setattr(c.model, k, v)
  return c


def _run(config, workdir):
  res = train_lib.train_and_evaluate(config, str(workdir))
  from ssdh_jax import checkpoints

  template = train_lib.create_train_state(
    config,
    models.build_model(config.model),
    train_lib.make_tx(config, _abstract_params(config.model, config.data.image_size))[0],
    jax.random.PRNGKey(0),
  )
  state, _ = checkpoints.Checkpointer(str(workdir), async_save=False).restore_latest(template)
  return res, state


def test_heads_only_training_leaves_backbone_untouched(tmp_path):
  c = _digits_config(trainable="heads", feature_cache="off")
  c.lock()
  init = train_lib.create_train_state(
    c,
    models.build_model(c.model),
    train_lib.make_tx(c, _abstract_params(c.model, 8))[0],
    jax.random.PRNGKey(c.seed),
  )
  _, state = _run(c, tmp_path / "run")
  for a, b in zip(jax.tree.leaves(init.params["backbone"]), jax.tree.leaves(state.params["backbone"])):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(init.batch_stats), jax.tree.leaves(state.batch_stats)):
    np.testing.assert_array_equal(a, b)  # frozen BatchNorm: running statistics, never updated
  moved = [
    np.max(np.abs(a - b))
    for a, b in zip(jax.tree.leaves(init.params["hash"]), jax.tree.leaves(state.params["hash"]))
  ]
  assert max(moved) > 0
  # No optimiser state for the frozen backbone: Adam moments only for the heads' leaves.
  paths = _leaf_paths(state.opt_state)
  assert any("hash" in p for p in paths) and not any("backbone" in p for p in paths)


def _mnv2_digits(**model):
  c = _digits_config(steps=4, name="mobilenet_v2", preprocess="imagenet", dropout=0.0, **model)
  c.data.image_size = 32
  c.data.resize_size = 32
  c.data.augment = "none"
  c.data.on_device_augment = False
  return c


def test_feature_cache_trains_and_evaluates_like_the_full_model(tmp_path, monkeypatch):
  """Same run with the frozen prefix cached and recomputed every step: same losses, params and mAP."""
  out = {}
  for mode in ("auto", "off"):
    c = _mnv2_digits(trainable="features_15", feature_cache=mode, feature_cache_dir=str(tmp_path / "cache"))
    c.lock()
    res, state = _run(c, tmp_path / mode)
    logs = [json.loads(x) for x in open(tmp_path / mode / "metrics.jsonl")]
    out[mode] = (res, state, [r["loss"] for r in logs if "loss" in r])
  assert glob.glob(str(tmp_path / "cache" / "prefix-*.npy")), "auto did not use the cache"
  np.testing.assert_allclose(out["auto"][2], out["off"][2], rtol=1e-3)  # float reassociation only
  # Float reassociation between the fused and the split network, amplified on the few channels whose
  # BatchNorm variance over a tiny batch is near zero: all but a few entries agree to 1 %.
  flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)])
  a, b = flat(out["auto"][1].params), flat(out["off"][1].params)
  off = np.abs(a - b) > 1e-5 + 1e-2 * np.abs(b)
  assert np.mean(off) < 5e-3  # 5.5e-4 measured; a wrong layer or BatchNorm mode moves most trainable entries
  assert out["auto"][0]["metrics"]["map"] == pytest.approx(out["off"][0]["metrics"]["map"], abs=2e-3)
  meta = json.load(open(tmp_path / "auto" / "run_meta.json"))
  assert meta["feature_cache"]["hit"] is False
  # eval.py on the finished run: reads the same cache, reproduces the reported mAP.
  from ssdh_jax import evaluate, evaluate_run

  calls = []
  encode = evaluate.encode
  monkeypatch.setattr(evaluate, "encode", lambda *a, **k: calls.append(len(a[3])) or encode(*a, **k))

  def refuse(what):
    def fn(*a, **k):
      raise AssertionError(f"evaluation built {what}")

    return fn

  # Restoring for evaluation reads parameters against eval_shape shapes: no optimiser, no training state.
  monkeypatch.setattr(optim, "make_optimizer", refuse("an optimiser"))
  monkeypatch.setattr(train_lib, "create_train_state", refuse("a training state"))
  again = evaluate_run.evaluate_workdir(str(tmp_path / "auto"))
  assert again["metrics"]["map"] == pytest.approx(out["auto"][0]["metrics"]["map"], abs=1e-9)
  assert len(calls) == 2  # queries and database, each encoded once (the index reuses the database codes)


def test_feature_cache_is_not_used_under_random_augmentation():
  c = _mnv2_digits(trainable="features_15")
  c.data.augment = "crop_flip"
  assert train_lib.cached_prefix_layer(c) == 0
  c.data.augment = "none"
  assert train_lib.cached_prefix_layer(c) == 15
  c.model.trainable = "all"
  assert train_lib.cached_prefix_layer(c) == 0


def _cache_call(c, splits, calls, cache_dir):
  def prefix_fn(images):
    calls.append(len(images))
    return jnp.asarray(images, jnp.float32).mean(axis=(1, 2)) * 2.0

  batches = lambda ex: pipeline.eval_batches(ex, c, 64)
  return feature_cache.load_or_extract(c, 5, splits, prefix_fn, batches, cache_dir)


def test_cache_hit_key_change_and_corruption(tmp_path, caplog):
  c = _mnv2_digits(trainable="features_15")
  splits, _ = pipeline.load_splits(c, str(tmp_path / "run"))
  cache_dir = str(tmp_path / "cache")
  calls = []
  view, rec = _cache_call(c, splits, calls, cache_dir)
  assert not rec["hit"] and calls
  q = splits["query"]
  expect = (
    np.stack([pipeline.eval_transform_one(im, c) for im in q.images]).astype(np.float32).mean(axis=(1, 2)) * 2
  )
  np.testing.assert_allclose(view["query"].images, expect, rtol=1e-6)
  assert view["query"].ids.tolist() == q.ids.tolist()

  calls.clear()
  _, rec = _cache_call(c, splits, calls, cache_dir)
  assert rec["hit"] and not calls  # read back, nothing recomputed

  c.data.resize_size = 40  # another input view: another key, never the old entry
  calls.clear()
  _, rec2 = _cache_call(c, splits, calls, cache_dir)
  assert not rec2["hit"] and calls and rec2["path"] != rec["path"]
  c.data.resize_size = 32

  # Flip bytes inside the stored array: the checksum catches it, the entry is rebuilt with a warning.
  with open(rec["path"], "r+b") as f:
    f.seek(-64, os.SEEK_END)
    f.write(b"\x7f" * 16)
  calls.clear()
  with caplog.at_level(logging.WARNING):
    view2, rec3 = _cache_call(c, splits, calls, cache_dir)
  assert not rec3["hit"] and calls and "checksum" in caplog.text
  np.testing.assert_allclose(view2["query"].images, expect, rtol=1e-6)
  # Truncated file: also rebuilt, never read as numbers.
  with open(rec["path"], "r+b") as f:
    f.truncate(200)
  calls.clear()
  _, rec4 = _cache_call(c, splits, calls, cache_dir)
  assert not rec4["hit"] and calls
  assert not glob.glob(os.path.join(cache_dir, "*.tmp-*")), "temporary files left behind"


def test_term_gradient_norms_do_not_change_the_update(tmp_path):
  c = _digits_config()
  c.loss.variant = "multi_label"
  dm = mesh.create("pmap", 1)
  batch = None
  out = {}
  for flag in (0, 1):
    model, tx, _, step_fn = train_lib.build_training(c, dm, term_grad_norms=bool(flag))
    state = train_lib.create_train_state(c, model, tx, jax.random.PRNGKey(0))
    if batch is None:
      splits, _ = pipeline.load_splits(c, str(tmp_path))
      b = next(pipeline.train_batches(splits, c, 0, 0))
      batch = {k: b[k] for k in ("image", "labels", "labeled")}
    pstate, m = step_fn(dm.replicate(state), dm.shard_batch(batch))
    out[flag] = (dm.to_host(pstate), jax.tree.map(float, dm.to_host(m)))
  for a, b in zip(jax.tree.leaves(out[0][0].params), jax.tree.leaves(out[1][0].params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  m = out[1][1]
  assert m["grad_norm"] == pytest.approx(out[0][1]["grad_norm"], rel=1e-4)
  for term in ("rank", "emb", "cls"):
    assert m[f"gnorm_{term}"] > 0 and -1.0 <= m[f"gcos_{term}"] <= 1.0
  assert "gnorm_rank" not in out[0][1]
