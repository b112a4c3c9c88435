"""Evaluate or search with a finished run directory (the library side of eval.py and ssdh-search)."""

from __future__ import annotations

import ast
import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from ssdh_jax import checkpoints, config_checks, evaluate, index, mesh, models, multihost
from ssdh_jax.data import pipeline


def load_run_config(workdir: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """The resolved config a run saved, with `key.sub=value` overrides; unknown keys are an error."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no config.json — is {workdir!r} a run directory written by train.py?")
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  for item in overrides:
    if "=" not in item:
      raise ValueError(f"--override {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      if p not in node:
        raise ValueError(f"--override {item!r}: unknown config field {key!r}")
      node = node[p]
    if leaf not in node:
      raise ValueError(f"--override {item!r}: unknown config field {key!r}")
    node[leaf] = value
  config_checks.check_config(config)
  config.lock()
  return config


def restore_state(config: ml_collections.ConfigDict, workdir: str, checkpoint: str = "best"):
  """(model, evaluate.ModelState, step) restored from the run's checkpoints: parameters and BatchNorm
  statistics only, read against shapes from jax.eval_shape (no optimiser, no initialiser run)."""
  model = models.build_model(config.model)
  shapes = models.variable_shapes(model, config.data.image_size)
  target = {k: jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), v) for k, v in shapes.items() if v}
  target["step"] = np.zeros((), np.int32)
  ckpt = checkpoints.Checkpointer(workdir, async_save=False)
  if checkpoint == "best":
    state, step = ckpt.restore_best(target)
  elif checkpoint == "latest":
    state, step = ckpt.restore_latest(target)
  else:
    try:
      wanted = int(checkpoint)
    except ValueError:
      raise ValueError(f"--checkpoint {checkpoint!r}: expected best, latest or a step number") from None
    state, step = ckpt.restore_step(target, wanted)
  if step == 0:
    raise FileNotFoundError(f"{workdir}: no readable checkpoint ({checkpoint})")
  return model, evaluate.ModelState(params=state["params"], batch_stats=state.get("batch_stats", {})), step


@contextlib.contextmanager
def _phase(
  name: str, seconds: dict[str, float], log: Callable[[str], None] | None, what: str = ""
) -> Iterator:
  if log is not None:
    log(f"eval: {name}{' ' + what if what else ''} ...")
  start = time.perf_counter()
  yield
  seconds[name] = time.perf_counter() - start


def evaluate_workdir(
  workdir: str,
  checkpoint: str = "best",
  overrides: Sequence[str] = (),
  *,
  log: Callable[[str], None] | None = None,
  distributed: bool = False,
  connect_timeout: float | None = None,
) -> dict[str, Any]:
  """Restores a checkpoint, evaluates query vs database, writes the report and the database index.

  Each image is encoded once; the index is the evaluated database. `log` (e.g. a stderr printer) gets one
  line as each phase starts and a summary of their durations; `results['eval_seconds']` holds them too.

  distributed: evaluate on several processes (jax.distributed with the run's train.coordinator_address,
    num_processes and process_id, or their overrides; `connect_timeout` s to reach the coordinator). By
    default this process evaluates alone, on its own devices, whatever number of processes trained the run:
    the saved distributed fields say how the run was launched, not what it is. A process that already joined
    a distributed runtime evaluates on all of its processes either way.
  """
  seconds: dict[str, float] = {}
  start = time.perf_counter()
  config = load_run_config(workdir, overrides)
  from ssdh_jax import train_lib

  num_devices = int(config.train.num_devices)
  if distributed:
    # On several processes each encodes its share and all get every code.
    config.train.distributed = True
    multihost.initialize(config.train, connect_timeout)
  elif num_devices > len(jax.local_devices()):
    num_devices = 0  # trained on a bigger host: encode on every device here (codes do not depend on it)
  dmesh = mesh.create(config.train.parallel, num_devices)
  log = log if dmesh.is_main else None
  with _phase("load data", seconds, log):
    split_data, meta = pipeline.load_splits(config, workdir)
  with _phase("restore", seconds, log, f"checkpoint {checkpoint!r}"):
    _, state, step = restore_state(config, workdir, checkpoint)
  n_q, n_db = len(split_data["query"]), len(split_data["database"])
  with _phase("encode", seconds, log, f"{n_q} queries + {n_db} database images"):
    # The frozen prefix's cached outputs (when the run used them) stand in for the images.
    model, split_data, _ = train_lib.input_view(config, state, split_data, workdir)
    q, db = evaluate.encode_query_database(config, model, state, split_data, dmesh)
  with _phase("metrics", seconds, log):
    db = evaluate.tie_ordered(config, db)  # the saved index keeps this order: search breaks ties the same way
    results = evaluate.report(config, q, db, meta, step=step)
  if not dmesh.is_main:
    return results
  with _phase("write", seconds, log, "report and index"):
    evaluate.write_report(workdir, results, config)
    index.save_index(
      os.path.join(workdir, "database_index.npz"),
      index.CodeIndex(
        codes=db["codes"],
        ids=db["ids"],
        labels=db["labels"],
        meta={
          "bits": int(config.model.bits),
          "backbone": config.model.name,
          "preprocessing": config.model.preprocess,
          "image_size": int(config.data.image_size),
          "split_hash": meta.get("split_hash", ""),
          "protocol": config.data.protocol,
          "checkpoint_step": int(step),
          "tie_break": evaluate.tie_break_label(config),
        },
      ),
    )
  seconds["total"] = time.perf_counter() - start
  results["eval_seconds"] = seconds
  if log is not None:
    log(
      f"eval: done in {seconds['total']:.1f} s ("
      + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items() if k != "total")
      + ")"
    )
  return results


def item_names(config: ml_collections.ConfigDict) -> tuple[list[str] | None, list[str] | None]:
  """(path of every pool id, class names) for the run's data source, where the source has them.

  Ids of folder and list-file pools are rows of their sorted path lists (`sources.scan_image_folder`,
  `sources.scan_list_files`), so a rescan maps ids back to files; other sources give (None, None).
  """
  from ssdh_jax.data import sources

  d = config.data
  if d.source == "folder":
    relpaths, _, class_names, _ = sources.scan_image_folder(d.manual_dir)
  elif d.source == "list":
    relpaths = sources.scan_list_files(d.manual_dir, d.list_files, int(d.num_classes), "skip")[0]
    class_names = None
  else:
    return None, None
  return [os.path.join(d.manual_dir, r) for r in relpaths], class_names


def _hit(index_: index.CodeIndex, pos: int, distance: int, rank: int, paths, class_names) -> dict:
  classes = np.flatnonzero(np.asarray(index_.labels[pos]) > 0).tolist()
  item = int(index_.ids[pos])
  return {
    "rank": rank,
    "id": item,
    "distance": int(distance),
    "label": [class_names[c] for c in classes] if class_names else classes,
    "path": paths[item] if paths is not None and 0 <= item < len(paths) else None,
  }


def search_images(
  workdir: str, index_path: str, images: Sequence[str], k: int, radius: int
) -> list[dict[str, Any]]:
  """Encodes image files with the run's best model and searches the index (top-k, or a Hamming ball).

  Returns one dict per query image: 'image' (its path) and 'hits', a list of dicts with 'rank' (1-based),
  'id', 'distance' (Hamming), 'label' (class names where the source has them, else class indices) and
  'path' (the database image, or None for sources without files).
  """
  from PIL import Image

  from ssdh_jax.data import pipeline

  if not images:
    raise ValueError("--image: give at least one query image")
  config = load_run_config(workdir)
  idx = index.load_index(index_path, bits=int(config.model.bits))
  arrays = []
  for path in images:
    try:
      with Image.open(path) as im:
        arrays.append(np.asarray(im.convert("RGB")))
    except (OSError, ValueError) as e:
      raise ValueError(f"{path}: cannot read image ({e})") from e
  model, state, _ = restore_state(config, workdir)
  batch = pipeline.eval_images(arrays, config)
  enc = evaluate.make_encoder(model, config.model.preprocess)
  codes, _ = enc(
    {"params": state.params, **({"batch_stats": state.batch_stats} if state.batch_stats else {})}, batch
  )
  from ssdh_jax import hashing

  packed = np.asarray(hashing.pack_bits(codes))
  paths, class_names = item_names(config)
  position = {int(item): p for p, item in enumerate(np.asarray(idx.ids))}
  if radius >= 0:
    found = index.range_search(idx, packed, radius)
  else:
    found = list(zip(*index.search(idx, packed, k, backend=evaluate.eval_backend(config))))
  return [
    {
      "image": img,
      "hits": [
        _hit(idx, position[int(i)], d, r, paths, class_names)
        for r, (i, d) in enumerate(zip(np.asarray(ids), np.asarray(dists)), start=1)
      ],
    }
    for img, (ids, dists) in zip(images, found)
  ]
