"""Evaluation: encode splits into packed binary codes, compute retrieval metrics, write the report.

Every reported number is keyed by protocol, split hash, bits, backbone, metric, R and checkpoint step.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ssdh_jax import hashing, metrics, preprocessing
from ssdh_jax import mesh as mesh_lib
from ssdh_jax.data import pipeline

PyTree = Any


@flax.struct.dataclass
class ModelState:
  """What encoding needs of a run: parameters and BatchNorm statistics (a TrainState also has them)."""

  params: PyTree
  batch_stats: PyTree


def _variables(state) -> dict:
  v = {"params": state.params}
  if state.batch_stats:
    v["batch_stats"] = state.batch_stats
  return v


def make_encoder(model: flax.linen.Module, preprocess_name: str | None):
  """A jitted (variables, uint8 images (B,H,W,3)) -> (codes bool (B,k), relaxed h float32 (B,k)).

  preprocess_name None: the inputs are cached activations, passed to the model as they are.
  One per (model, preprocess_name) (modules compare by their fields): jit caches compiled programs per
  function object, so a new closure on every `encode` call (every validation pass, the query and the database
  of eval.py) would trace and compile the whole network again.
  """
  try:
    return _cached_encoder(model, preprocess_name)
  except TypeError:  # a user's module with unhashable fields: a fresh encoder
    return _encoder(model, preprocess_name)


@functools.lru_cache(maxsize=16)
def _cached_encoder(model: flax.linen.Module, preprocess_name: str | None):
  return _encoder(model, preprocess_name)


def _encoder(model: flax.linen.Module, preprocess_name: str | None):

  @jax.jit
  def encode_batch(variables, images):
    if preprocess_name is not None:
      images = preprocessing.preprocess(images, preprocess_name)
    out = model.apply(variables, images, train=False)
    return hashing.binarize(out["codes"]), out["codes"]

  return encode_batch


def encode(
  config: ml_collections.ConfigDict,
  model: flax.linen.Module,
  state,
  examples,
  *,
  batch_size: int | None = None,
  return_relaxed: bool = False,
  progress: bool = False,
  desc: str = "",
  dmesh: mesh_lib.DataMesh | None = None,
) -> dict[str, np.ndarray]:
  """Encodes `examples` with centre-crop evaluation preprocessing, batches sharded over local devices; with
  `progress`, a bar named `desc` on a terminal.

  dmesh: on a multi-process run, each process encodes its contiguous share of the rows (`DataMesh.share`)
  and every process gets all codes back, in row order.

  Returns: dict(codes uint32 (N, ceil(k/32)) packed, labels float32 (N,C), ids int64 (N,)
  [, relaxed float32 (N,k)]).
  """
  if dmesh is not None and dmesh.num_processes > 1:
    part = dmesh.share(len(examples))
    local = encode(config, model, state, examples.subset(np.arange(part.start, part.stop)),
                   batch_size=batch_size, return_relaxed=return_relaxed, progress=progress, desc=desc)  # fmt: skip
    return dmesh.gather_rows(local)
  devices = jax.local_devices()
  n_dev = len(devices)
  bs = int(batch_size or config.eval.batch_size)
  bs = max(n_dev, bs - bs % n_dev)
  sharding = NamedSharding(Mesh(np.asarray(devices), ("data",)), P("data"))
  variables = jax.device_put(_variables(state), NamedSharding(sharding.mesh, P()))
  encode_batch = make_encoder(model, None if pipeline.is_feature_array(examples) else config.model.preprocess)
  codes, relaxed, labels, ids = [], [], [], []
  from tqdm.auto import tqdm

  bar = tqdm(total=len(examples), desc=f"encode {desc}".strip(), unit="img", dynamic_ncols=True, leave=False,
             disable=None if progress else True)  # fmt: skip

  def collect(done) -> None:
    b, h, n, batch = done
    codes.append(np.asarray(hashing.pack_bits(b))[:n])
    if return_relaxed:
      relaxed.append(np.asarray(h)[:n])
    labels.append(np.asarray(batch["labels"]))
    ids.append(np.asarray(batch["id"]))
    bar.update(n)

  # One batch in flight: JAX dispatches asynchronously, so the next batch is decoded while this one runs.
  pending = None
  for batch in pipeline.eval_batches(examples, config, bs):
    images = np.asarray(batch["image"])
    n = images.shape[0]
    pad = (-n) % n_dev  # the last batch is padded to a multiple of the device count, then trimmed
    if pad:
      images = np.concatenate([images, np.repeat(images[-1:], pad, axis=0)])
    b, h = encode_batch(variables, jax.device_put(images, sharding))
    if pending is not None:
      collect(pending)
    pending = (b, h, n, batch)
  if pending is not None:
    collect(pending)
  bar.close()
  out = {
    "codes": np.concatenate(codes),
    "labels": np.concatenate(labels).astype(np.float32),
    "ids": np.concatenate(ids).astype(np.int64),
  }
  if return_relaxed:
    out["relaxed"] = np.concatenate(relaxed)
  return out


def _tie_setting(config: ml_collections.ConfigDict) -> tuple[str, int]:
  """(eval.tie_break, eval.tie_seed); runs saved before the fields existed get today's default."""
  return config.eval.get("tie_break", "id_hash"), int(config.eval.get("tie_seed", 0))


def tie_ordered(config: ml_collections.ConfigDict, db: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The encoded database (`encode`'s dict) in the order whose positions break distance ties
  (config.eval.tie_break; see `metrics.tie_order`). Idempotent."""
  mode, seed = _tie_setting(config)
  if mode == "index":
    return dict(db)
  perm = metrics.tie_order(db["ids"], seed)
  return {k: np.asarray(v)[perm] for k, v in db.items()}


def eval_backend(config: ml_collections.ConfigDict) -> str:
  """config.eval.backend (`metrics.resolve_backend`); runs saved before the field existed get 'auto'."""
  return str(config.eval.get("backend", "auto"))


def tie_break_label(config: ml_collections.ConfigDict) -> str:
  """The tie convention as every report key and saved index states it."""
  mode, seed = _tie_setting(config)
  return "database index (stable)" if mode == "index" else f"seeded order of item ids (seed {seed})"


def validation_map(
  config: ml_collections.ConfigDict,
  model: flax.linen.Module,
  state,
  splits: Mapping,
  dmesh: mesh_lib.DataMesh | None = None,
) -> float:
  """mAP@R of validation queries against a fixed database sample: the model-selection signal (never queries)."""
  val = splits["validation"]
  db = splits["database"]
  nq = min(int(config.eval.val_queries), len(val.ids))
  ndb = min(int(config.eval.val_database), len(db.ids))
  rng = np.random.default_rng(config.data.split_seed)
  val = val.subset(np.sort(rng.choice(len(val.ids), nq, replace=False)))
  # Validation images may belong to the protocol's database: keep them out so none retrieves itself.
  others = np.flatnonzero(~np.isin(db.ids, val.ids))
  db = db.subset(np.sort(rng.choice(others, min(ndb, len(others)), replace=False)))
  q = encode(config, model, state, val, dmesh=dmesh)
  d = tie_ordered(config, encode(config, model, state, db, dmesh=dmesh))
  return float(
    metrics.mean_average_precision(
      q["codes"],
      d["codes"],
      q["labels"],
      d["labels"],
      bits=config.model.bits,
      R=int(config.eval.map_r),
      query_chunk=int(config.eval.query_chunk),
      backend=eval_backend(config),
    )
  )


def encode_query_database(
  config: ml_collections.ConfigDict,
  model: flax.linen.Module,
  state,
  splits: Mapping,
  dmesh: mesh_lib.DataMesh | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """Codes of the query and database splits (`encode`'s dicts; the database's with 'relaxed')."""
  show = bool(config.train.progress) and (dmesh is None or dmesh.is_main)
  q = encode(config, model, state, splits["query"], progress=show, desc="queries", dmesh=dmesh)
  d = encode(config, model, state, splits["database"], return_relaxed=True, progress=show, desc="database",
             dmesh=dmesh)  # fmt: skip
  return q, d


def evaluate_state(
  config: ml_collections.ConfigDict,
  model: flax.linen.Module,
  state,
  splits: Mapping,
  meta: Mapping[str, Any],
  *,
  step: int,
  dmesh: mesh_lib.DataMesh | None = None,
) -> dict[str, Any]:
  """Query-vs-database retrieval metrics of `state`, keyed as every reported number must be."""
  q, d = encode_query_database(config, model, state, splits, dmesh)
  return report(config, q, d, meta, step=step)


def report(
  config: ml_collections.ConfigDict,
  q: Mapping[str, np.ndarray],
  d: Mapping[str, np.ndarray],
  meta: Mapping[str, Any],
  *,
  step: int,
) -> dict[str, Any]:
  """Metrics of encoded queries `q` against the encoded database `d`, with the report key."""
  d = tie_ordered(config, d)
  res = metrics.evaluate_codes(
    q["codes"],
    d["codes"],
    q["labels"],
    d["labels"],
    bits=config.model.bits,
    R=int(config.eval.map_r),
    topk=tuple(config.eval.topk),
    radius=int(config.eval.hamming_radius),
    drop_no_relevant=bool(config.eval.drop_no_relevant),
    expected_ties=bool(config.eval.expected_ties),
    query_chunk=int(config.eval.query_chunk),
    backend=eval_backend(config),
  )
  backend = res.pop("backend")
  stats = hashing.bit_statistics(hashing.unpack_bits(jnp.asarray(d["codes"]), config.model.bits))
  # Constant bits never separate two database items: a 48-bit code with 20 of them is a 28-bit code.
  res["constant_bits"] = int(stats["constant_bits"])
  res["bit_entropy"] = float(stats["bit_entropy"])
  return {
    "key": {
      "protocol": config.data.protocol,
      # A label-scarce run (data.num_labeled) scores the protocol's queries and database with fewer labels.
      "num_labeled": int(meta.get("labeled_subset", {}).get("num_labeled", 0)) or None,
      "split_seed": int(config.data.split_seed),
      "split_hash": meta.get("split_hash", ""),
      "bits": int(config.model.bits),
      "backbone": config.model.name,
      "loss": config.loss.name,
      "lambda": float(config.loss.lam),
      "R": int(config.eval.map_r),
      "R_label": "all" if int(config.eval.map_r) == 0 else str(int(config.eval.map_r)),
      "checkpoint_step": int(step),
      "seed": int(config.seed),
      "num_queries": len(q["ids"]),
      "num_database": len(d["ids"]),
      "drop_no_relevant": bool(config.eval.drop_no_relevant),
      "hamming_radius": int(config.eval.hamming_radius),
      "tie_break": tie_break_label(config),
      "eval_backend": backend,  # what ranked the metrics: 'jax' or 'faiss' (same numbers either way)
    },
    "metrics": res,
    "bit_balance": np.asarray(stats["ones"]),
  }


def _jsonable(x):
  if isinstance(x, dict):
    return {k: _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (np.ndarray, jax.Array)):
    return np.asarray(x).tolist()
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  return x


def scalar_metrics(results: Mapping[str, Any]) -> dict[str, float]:
  return {k: float(v) for k, v in results["metrics"].items() if np.ndim(v) == 0 and not isinstance(v, str)}


# Column titles of printed tables (the README's notation); H≤r is the Hamming ball of the run's radius.
_TITLES = {
  "R_label": "R",
  "map": "mAP",
  "precision_radius": "P@H≤{r}",
  "recall_radius": "R@H≤{r}",
  "map_radius": "mAP@H≤{r}",
  "map_expected_ties": "mAP (expected over tie orders)",
}


_COUNT_COLS = ("constant_bits",)  # integer metrics, printed without decimals


def markdown_table(rows: list[Mapping[str, Any]]) -> str:
  """One row per result: the key columns then every scalar metric, titled in the README's notation."""
  if not rows:
    return ""
  key_cols = ["protocol", "split_hash", "bits", "backbone", "loss", "R_label", "checkpoint_step", "seed"]
  metric_cols = list(scalar_metrics(rows[0]))
  radius = rows[0]["key"].get("hamming_radius", "r")
  titles = [_TITLES.get(c, c).format(r=radius) for c in key_cols + metric_cols]
  head = "| " + " | ".join(titles) + " |"
  sep = "|" + "---|" * (len(key_cols) + len(metric_cols))
  lines = [head, sep]
  for r in rows:
    k = dict(r["key"])
    k["split_hash"] = str(k["split_hash"])[:12]
    if k.get("num_labeled"):
      k["protocol"] = f"{k['protocol']} ({k['num_labeled']} labels)"
    vals = [str(k[c]) for c in key_cols] + [
      f"{v:.0f}" if c in _COUNT_COLS else f"{v:.4f}" for c, v in scalar_metrics(r).items()
    ]
    lines.append("| " + " | ".join(vals) + " |")
  return "\n".join(lines) + "\n"


def write_plots(path_prefix: str, results: Mapping[str, Any]) -> list[str]:
  """PR curves (by rank and by Hamming radius), precision@K and the bit-balance histogram as PNGs."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  m = results["metrics"]
  k = results["key"]
  title = f"{k['protocol']} · {k['backbone']} · {k['bits']} bits · step {k['checkpoint_step']}"
  fig, axes = plt.subplots(1, 4, figsize=(18, 4))
  ax = axes[0]
  ax.plot(np.asarray(m["pr_rank_recall"]), np.asarray(m["pr_rank_precision"]), "-")
  ax.set(xlabel="recall", ylabel="precision", title="PR by rank position", xlim=(0, 1), ylim=(0, 1.02))
  ax = axes[1]
  ax.plot(np.asarray(m["pr_radius_recall"]), np.asarray(m["pr_radius_precision"]), "o-")
  ax.set(xlabel="recall", ylabel="precision", title="PR by Hamming radius 0..k", xlim=(0, 1), ylim=(0, 1.02))
  ax = axes[2]
  ax.plot(np.asarray(m["precision_at_k_k"]), np.asarray(m["precision_at_k"]), "o-")
  ax.set(xlabel="K", ylabel="precision@K", title="precision@top-K", xscale="log", ylim=(0, 1.02))
  ax = axes[3]
  bal = np.asarray(results["bit_balance"])
  ax.bar(np.arange(len(bal)), bal)
  ax.axhline(0.5, color="k", lw=0.8)
  ax.set(xlabel="bit", ylabel="fraction of 1s (database)", title="bit balance", ylim=(0, 1))
  fig.suptitle(title)
  fig.tight_layout()
  path = f"{path_prefix}_curves.png"
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return [path]


def write_report(
  workdir: str, results: Mapping[str, Any], config: ml_collections.ConfigDict
) -> dict[str, str]:
  """Writes metrics.json, the Markdown table and PNG plots into `workdir` (atomically for the JSON)."""
  del config
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "metrics.json")
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(_jsonable(results), f, indent=1)
  os.replace(tmp, path)
  table = os.path.join(workdir, "results.md")
  with open(table, "w") as f:
    f.write(markdown_table([results]))
  plots = write_plots(os.path.join(workdir, "eval"), results)
  return {"metrics": path, "table": table, "plots": ",".join(plots)}
