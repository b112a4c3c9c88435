"""Every config value checked up front, so bad input fails in one line naming the field, before any work.

`check_config` covers types, ranges and choices of the fields in configs/default.py. Checks that need the data
(paths, image sizes against the pool) stay where the data is read; they fail before training too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from ssdh_jax import losses, models, preprocessing, ranking
from ssdh_jax.models import depthwise, pointwise

Rule = Callable[[Any], str | None]  # returns what is wrong, or None


def _int(lo: int | None = None, hi: int | None = None) -> Rule:
  def rule(v):
    if isinstance(v, bool) or not isinstance(v, int):
      return f"expected an integer, got {v!r}"
    if lo is not None and v < lo:
      return f"must be ≥ {lo}, got {v}"
    if hi is not None and v > hi:
      return f"must be ≤ {hi}, got {v}"
    return None

  return rule


def _num(
  lo: float | None = None, hi: float | None = None, *, open_lo: bool = False, open_hi: bool = False
) -> Rule:
  def rule(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
      return f"expected a number, got {v!r}"
    if lo is not None and (v <= lo if open_lo else v < lo):
      return f"must be {'>' if open_lo else '≥'} {lo}, got {v}"
    if hi is not None and (v >= hi if open_hi else v > hi):
      return f"must be {'<' if open_hi else '≤'} {hi}, got {v}"
    return None

  return rule


def _choice(*options: str) -> Rule:
  return lambda v: None if v in options else f"expected one of {' | '.join(options)}, got {v!r}"


def _bool(v) -> str | None:
  return None if isinstance(v, bool) else f"expected True or False, got {v!r}"


def _str(v) -> str | None:
  return None if isinstance(v, str) else f"expected a string, got {v!r}"


def _window(v) -> str | None:
  ok = isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, int) for x in v)
  return None if ok and 0 <= v[0] < v[1] else f"expected (a, b) integers with 0 ≤ a < b, got {v!r}"


def _topk(v) -> str | None:
  ok = isinstance(v, (list, tuple)) and all(isinstance(x, int) and x >= 1 for x in v)
  return None if ok else f"expected a list of integers ≥ 1, got {v!r}"


def _terms(v) -> str | None:
  ok = isinstance(v, (list, tuple)) and all(
    isinstance(t, (list, tuple)) and len(t) == 2 and isinstance(t[0], str) and isinstance(t[1], (int, float))
    for t in v
  )
  return None if ok else f"expected ((name, weight), ...), got {v!r}"


def _registered(get: Callable[[str], Any], v) -> str | None:
  """None if `get` (a registry getter) knows `v`, else its one-line error: what is registered, how to add one."""
  if not isinstance(v, str):
    return f"expected a string, got {v!r}"
  try:
    get(v)
  except ValueError as e:
    return str(e)
  return None


def _trainable(v) -> str | None:
  return None if isinstance(v, str) and v else f"expected all | heads | a backbone layer name, got {v!r}"


RULES: Mapping[str, Rule] = {
  "seed": _int(0),
  "data.source": _choice("digits", "tfds", "folder", "list", "arrays"),
  "data.tfds_name": _str,
  "data.split_seed": _int(0),
  "data.num_classes": _int(1),
  "data.multi_label": _bool,
  "data.labeled_fraction": _num(0.0, 1.0, open_lo=True),
  "data.include_unlabeled": _bool,
  "data.num_labeled": _int(0),
  "data.resize_size": _int(0),
  "data.image_size": _int(1),
  "data.augment": _choice("none", "crop_flip", "pad_crop_flip"),
  "data.pad": _int(0),
  "data.on_device_augment": _bool,
  "data.on_bad_image": _choice("error", "skip"),
  "data.val_size": _int(-1),
  "data.val_from": _choice("", "unlabeled", "labeled"),
  "data.in_memory": _choice("auto", "always", "never"),
  "data.num_workers": _int(0),
  "model.name": lambda v: _registered(models.backbone_spec, v),  # registered ones too, at check time
  "model.bits": _int(1, 4096),
  "model.num_classes": _int(0),
  "model.dropout": _num(0.0, 1.0, open_hi=True),
  "model.width": _int(1),
  "model.dtype": _choice("float32", "bfloat16", "float16"),
  "model.param_dtype": _choice("float32", "bfloat16", "float16"),
  "model.pretrained": _str,
  "model.preprocess": _choice(*preprocessing.PREPROCESSORS),
  "model.depthwise": _choice("auto", *depthwise.IMPLS),
  "model.pointwise": _choice("auto", *pointwise.IMPLS),
  "model.trainable": _trainable,
  "model.feature_cache": _choice("auto", "off"),
  "pseudo.mode": _choice("off", "propagate"),
  "pseudo.feature": _choice("features", "codes"),
  "pseudo.k": _int(1),
  "pseudo.alpha": _num(0.0, 1.0, open_hi=True),
  "pseudo.gamma": _num(0.0),
  "pseudo.iters": _int(1),
  "pseudo.fraction": _num(0.0, 1.0),
  "pseudo.refresh_every": _int(0),
  "loss.name": _str,  # resolved by check_names (training): evaluation never builds the loss
  "loss.variant": _choice("multi_label", "single_label"),
  "loss.graph_feature": _choice("codes", "features", "fc7"),
  "loss.graph_filter": _choice("none", "class_agree"),
  "loss.cls_in_single_label": _bool,
  "loss.graph": _str,  # resolved by check_names (training)
  "loss.extra_terms": _terms,
  "loss.knn_k": _int(1),
  "loss.neg_window": _window,
  "loss.window_ref_n": _int(1),
  "loss.lam": _num(0.0),
  "loss.lam_rampup_steps": _int(0),
  "loss.margin": _num(0.0, open_lo=True),
  "loss.rank_margin": _num(0.0),
  "loss.max_tries": _int(1),
  "loss.dpsh_eta": _num(0.0),
  "optim.name": _choice("sgd", "adam"),
  "optim.lr": _num(0.0, open_lo=True),
  "optim.momentum": _num(0.0, 1.0, open_hi=True),
  "optim.weight_decay": _num(0.0),
  "optim.bias_lr_mult": _num(0.0),
  "optim.schedule": _choice("step", "cosine", "constant"),
  "optim.step_every": _int(1),
  "optim.step_gamma": _num(0.0, open_lo=True),
  "optim.warmup_steps": _int(0),
  "optim.backbone_lr_mult": _num(0.0),
  "optim.grad_clip": _num(0.0),
  "train.batch_size": _int(2),
  "train.num_steps": _int(1),
  "train.parallel": _choice("pmap", "shard_map"),
  "train.num_devices": _int(0),
  "train.num_processes": _int(0),
  "train.process_id": _int(0),
  "train.init_timeout": _int(1),
  "train.heartbeat_timeout": _int(1),
  "train.shutdown_timeout": _int(1),
  "train.checkpoint_timeout": _int(1),
  "train.log_every": _int(1),
  "train.eval_every": _int(0),
  "train.checkpoint_every": _int(1),
  "train.keep_checkpoints": _int(1),
  "train.term_grad_norms": _int(0),
  "eval.batch_size": _int(1),
  "eval.map_r": _int(0),
  "eval.topk": _topk,
  "eval.hamming_radius": _int(0),
  "eval.query_chunk": _int(1),
  "eval.backend": _choice("auto", "jax", "faiss"),
  "eval.tie_break": _choice("id_hash", "index"),
  "eval.tie_seed": _int(0),
  "eval.val_queries": _int(1),
  "eval.val_database": _int(1),
}


def check_config(config: ml_collections.ConfigDict | Mapping[str, Any]) -> None:
  """Raises ValueError naming the first bad field: `config.<field>: <what is wrong>`.

  Fields absent from `config` (an older run's saved config) are skipped; they take the release's behaviour.
  """
  for path, rule in RULES.items():
    node: Any = config
    for part in path.split("."):
      if part not in node:
        break
      node = node[part]
    else:
      problem = rule(node)
      if problem:
        raise ValueError(f"config.{path}: {problem}")
  if "eval" in config and config["eval"].get("backend") == "faiss" and ranking.faiss_module() is None:
    raise ValueError(
      "config.eval.backend: 'faiss' needs FAISS, which is not installed: pip install faiss-cpu"
    )
  p = config.get("pseudo", {})
  if p.get("mode", "off") != "off":
    if config["data"]["multi_label"]:
      raise ValueError(
        "config.pseudo.mode: pseudo-labels are single-label (one class per image); got multi_label data"
      )
  t = config["train"]
  if t.get("coordinator_address") and not 0 <= int(t["process_id"]) < int(t["num_processes"]):
    raise ValueError(
      f"config.train.process_id: {t['process_id']} is not below train.num_processes={t['num_processes']} "
      "(both are needed with train.coordinator_address)"
    )
  if t["batch_size"] % max(int(t["num_devices"]), 1):
    raise ValueError(
      f"config.train.batch_size: {t['batch_size']} does not split over train.num_devices={t['num_devices']}"
    )


def check_names(config: ml_collections.ConfigDict | Mapping[str, Any], *, loss: bool = True) -> None:
  """Resolves every name a training run looks up, so a bad one fails before a run folder is created.

  Backbone (model.name) and its layer (model.trainable), loss (loss.name; skipped with loss=False, when the
  caller brings its own loss function), loss terms (loss.extra_terms), graph builder (loss.graph), protocol
  (data.protocol) and pretrained weights (model.pretrained: the file exists, or a torchvision name the
  backbone has; nothing is downloaded here). Raises ValueError (FileNotFoundError for a missing weights file)
  in one line: `config.<field>: ...`, with what is registered and how to add one. `check_config` first.
  """
  from ssdh_jax import graph, weights
  from ssdh_jax.data import splits

  m, lo, d = config["model"], config["loss"], config["data"]
  problem = _registered(models.backbone_spec, m["name"])
  if problem:
    raise ValueError(f"config.model.name: {problem}")
  models.first_trainable_layer(m)  # its error names config.model.trainable and the backbone's layers
  if loss:
    problem = _registered(losses.get_loss, lo["name"])
    if problem:
      raise ValueError(f"config.loss.name: {problem}")
  terms = tuple(lo.get("extra_terms", ()))
  for name, _ in terms:
    problem = _registered(losses.get_term, name)
    if problem:
      raise ValueError(f"config.loss.extra_terms: {problem}")
  if terms and loss and lo["name"] == "dpsh":
    raise ValueError(
      "config.loss.extra_terms: loss 'dpsh' adds no extra terms (only 'ssdh' does); remove them"
    )
  if "graph" in lo:
    problem = _registered(graph.get_graph_builder, lo["graph"])
    if problem:
      raise ValueError(f"config.loss.graph: {problem}")
  try:
    splits.get_protocol(d["protocol"], num_classes=int(d["num_classes"]), multi_label=bool(d["multi_label"]))
  except ValueError as e:
    raise ValueError(f"config.data.protocol: {e}") from None
  if m.get("pretrained"):
    weights.check_pretrained(m["pretrained"], m["name"])
