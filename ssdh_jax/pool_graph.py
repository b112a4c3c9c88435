"""A similarity graph over the whole training pool, and pseudo-labels propagated over it.

SSDH's embedding term sees a graph rebuilt inside each mini-batch of 128 images, so an unlabeled image meets
only the few neighbours that happen to share its batch. Here the graph spans every training image (labeled and
unlabeled): exact k nearest neighbours by cosine similarity of the model's features (or relaxed codes), refreshed
during training. Labels spread over it by label propagation (Zhou et al. 2004, as used for deep semi-supervised
learning by Iscen et al., CVPR 2019): solve (I - alpha S) Z = Y with S the symmetrically normalised graph and Y
the one-hot labels of the labeled rows. The most confident unlabeled rows of each predicted class then join the
labeled set with their predicted class (`config.pseudo`), so the triplet and class terms see them.

The true labels of unlabeled rows are read for two diagnostics only (edge purity, pseudo-label accuracy); they
never reach the graph, the propagation or the choice of rows.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import scipy.sparse
import scipy.sparse.linalg

from ssdh_jax import preprocessing
from ssdh_jax.data import pipeline
from ssdh_jax.data.sources import Examples

MODES = ("off", "propagate")
FEATURES = ("features", "codes")


@functools.partial(jax.jit, static_argnames="k")
def _chunk_knn(q: jax.Array, db: jax.Array, rows: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  sims = q @ db.T
  sims = jnp.where(jnp.arange(db.shape[0])[None, :] == rows[:, None], -jnp.inf, sims)  # no self-edges
  return jax.lax.top_k(sims, k)


def knn(features: np.ndarray, k: int, *, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
  """Exact k nearest neighbours of every row among the other rows, by cosine similarity.

  Args:
    features: float (N, D); rows are L2-normalised here (a zero row stays zero: similarity 0 to all).
    k: neighbours per row (< N).
    chunk: query rows per matmul (memory: chunk x N floats).

  Returns:
    idx int32 (N, k) neighbour rows, most similar first; sim float32 (N, k) their cosine similarities.
  """
  x = np.asarray(features, np.float32)
  n = x.shape[0]
  if not 0 < k < n:
    raise ValueError(f"knn: k must be in [1, {n - 1}] for {n} rows, got {k}")
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  db = jnp.asarray(x)
  idx, sim = np.empty((n, k), np.int32), np.empty((n, k), np.float32)
  for lo in range(0, n, chunk):
    hi = min(n, lo + chunk)
    # The last chunk is padded to the chunk size so the program compiles once.
    rows = np.arange(lo, lo + chunk)
    q = np.zeros((chunk, x.shape[1]), np.float32)
    q[: hi - lo] = x[lo:hi]
    s, i = _chunk_knn(jnp.asarray(q), db, jnp.asarray(rows), k)
    sim[lo:hi], idx[lo:hi] = np.asarray(s)[: hi - lo], np.asarray(i)[: hi - lo]
  return idx, sim


def cached_knn(features: np.ndarray, k: int, cache_dir: str = "") -> tuple[np.ndarray, np.ndarray]:
  """`knn`, read from / written to cache_dir/pool_graph/ when cache_dir is set (keyed by the features' bytes)."""
  if not cache_dir:
    return knn(features, k)
  x = np.ascontiguousarray(features, np.float32)
  digest = hashlib.sha256(np.asarray(x.shape, np.int64).tobytes() + x.tobytes()).hexdigest()[:24]
  path = os.path.join(cache_dir, "pool_graph", f"knn-{digest}-k{k}.npz")
  if os.path.exists(path):
    with np.load(path) as f:
      return f["idx"], f["sim"]
  idx, sim = knn(x, k)
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    np.savez(tmp, idx=idx, sim=sim)
    os.replace(tmp, path)
  return idx, sim


def edge_purity(idx: np.ndarray, labels: np.ndarray, rows: np.ndarray | None = None) -> float:
  """Fraction of the edges (rows[i], idx[i, j]) whose end points share a class.

  idx: int (M, k) neighbours of rows `rows` (default: 0..M-1); labels: (N, C) multi-hot of every row.
  """
  lab = np.asarray(labels) > 0
  rows = np.arange(len(idx)) if rows is None else np.asarray(rows)
  shared = (lab[rows][:, None, :] & lab[idx]).any(-1)
  return float(shared.mean())


def propagate(
  idx: np.ndarray,
  sim: np.ndarray,
  seeds: np.ndarray,
  *,
  alpha: float = 0.99,
  gamma: float = 3.0,
  iters: int = 20,
) -> np.ndarray:
  """Label propagation over a kNN graph: Z = (I - alpha S)^-1 Y, by conjugate gradients (`iters` steps).

  Args:
    idx, sim: the kNN graph (`knn`); edge weights max(sim, 0)^gamma, made symmetric (W + W^T).
    seeds: float (N, C): one-hot (multi-hot) rows for labeled rows, zero rows for unlabeled ones. Each class
      column is divided by its count, so a class with more labeled rows does not spread further.
    alpha: in [0, 1): how far labels spread (0: only the seeds themselves).

  Returns:
    Z float32 (N, C), unnormalised class scores of every row.
  """
  n, k = idx.shape
  if not 0.0 <= alpha < 1.0:
    raise ValueError(f"propagate: alpha must be in [0, 1), got {alpha}")
  w = scipy.sparse.csr_matrix(
    (np.maximum(sim, 0.0).astype(np.float64).ravel() ** gamma, idx.ravel(), np.arange(0, n * k + 1, k)),
    shape=(n, n),
  )
  w = w + w.T
  deg = np.asarray(w.sum(axis=1)).ravel()
  d = 1.0 / np.sqrt(np.maximum(deg, 1e-12))
  s = scipy.sparse.diags(d) @ w @ scipy.sparse.diags(d)
  a = scipy.sparse.eye(n) - alpha * s
  y = np.asarray(seeds, np.float64)
  y = y / np.maximum(y.sum(axis=0, keepdims=True), 1.0)
  z = np.zeros_like(y)
  for c in range(y.shape[1]):
    z[:, c], _ = scipy.sparse.linalg.cg(a, y[:, c], maxiter=iters, rtol=1e-6)
  return z.astype(np.float32)


def select(scores: np.ndarray, rows: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
  """Class-balanced choice of pseudo-labels: for each class, the `fraction` most confident of the rows `rows`
  predicted to be in it. Confidence is 1 - entropy / log C of the row's normalised scores (Iscen et al.).

  Returns:
    chosen int64 (M,) rows (sorted), and their one-hot pseudo-labels float32 (M, C).
  """
  z = np.maximum(np.asarray(scores, np.float64)[rows], 0.0)
  p = z / np.maximum(z.sum(axis=1, keepdims=True), 1e-12)
  c = p.shape[1]
  entropy = -(p * np.log(np.maximum(p, 1e-12))).sum(axis=1)
  conf = 1.0 - entropy / np.log(c)
  pred = p.argmax(axis=1)
  valid = z.sum(axis=1) > 0  # rows the labels never reached carry no prediction
  chosen = []
  for cls in range(c):
    members = np.flatnonzero((pred == cls) & valid)
    take = round(fraction * len(members))
    chosen.append(members[np.argsort(-conf[members], kind="stable")[:take]])
  pick = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
  return np.asarray(rows)[pick].astype(np.int64), np.eye(c, dtype=np.float32)[pred[pick]]


def concat(a: Examples, b: Examples) -> Examples:
  """Rows of `a` then rows of `b` (both in memory, or both file lists)."""
  if a.in_memory != b.in_memory:
    raise ValueError("concat: one set is in memory and the other is a list of files")
  images = np.concatenate([a.images, b.images]) if a.in_memory else [*a.images, *b.images]
  origin = None if a.origin is None or b.origin is None else np.concatenate([a.origin, b.origin])
  return Examples(images, np.concatenate([a.labels, b.labels]), np.concatenate([a.ids, b.ids]), origin)


def pool_features(
  config: ml_collections.ConfigDict, model: flax.linen.Module, variables: Mapping, examples: Examples
) -> np.ndarray:
  """config.pseudo.feature of every row: 'features' (the backbone output the hash layer reads) or 'codes'
  (the sigmoid-relaxed codes), float32 (N, D), evaluation view, one device."""
  key = "features" if config.pseudo.feature == "features" else "codes"
  name = None if pipeline.is_feature_array(examples) else config.model.preprocess

  @jax.jit
  def apply(images):
    x = images if name is None else preprocessing.preprocess(images, name)
    return model.apply(variables, x, train=False)[key]

  out = [
    np.asarray(apply(b["image"]))
    for b in pipeline.eval_batches(examples, config, int(config.eval.batch_size))
  ]
  return np.concatenate(out).astype(np.float32)


def _path(workdir: str, step: int) -> str:
  return os.path.join(workdir, "pseudo_labels", f"step_{step:08d}.npz")


def latest_saved(workdir: str, step: int) -> int | None:
  """The latest refresh step <= `step` whose pseudo-labels are saved in the run folder (None: none)."""
  folder = os.path.join(workdir, "pseudo_labels")
  if not os.path.isdir(folder):
    return None
  steps = [int(f[5:13]) for f in os.listdir(folder) if f.startswith("step_") and f.endswith(".npz")]
  steps = [s for s in steps if s <= step]
  return max(steps) if steps else None


def refresh_due(config: ml_collections.ConfigDict, step: int) -> bool:
  """Whether pseudo-labels are (re)computed before `step`: at step 0, then every pseudo.refresh_every steps."""
  every = int(config.pseudo.refresh_every)
  return config.pseudo.mode != "off" and (step == 0 or (every > 0 and step % every == 0))


def refresh(
  config: ml_collections.ConfigDict,
  model: flax.linen.Module,
  variables: Mapping,
  splits: Mapping[str, Examples],
  *,
  step: int,
  workdir: str,
  cache_dir: str = "",
  write: bool = True,
) -> tuple[dict[str, Examples], dict[str, float]]:
  """Training splits with pseudo-labeled rows added to 'train_labeled', and the diagnostics of the refresh.

  The kNN graph spans train_labeled + train_unlabeled (features of `variables`); the chosen unlabeled rows
  (`select`) are appended to train_labeled with their predicted class and stay in train_unlabeled too. With
  `write`, the choice is saved under workdir/pseudo_labels/, so a resumed run reads it back (`load`) instead
  of recomputing it from later parameters. With `cache_dir`, the kNN graph is kept there keyed by the
  features' bytes, so runs over the same frozen features (a grid of seeds or settings) build it once.
  """
  p = config.pseudo
  t0 = time.perf_counter()
  lab, unl = splits["train_labeled"], splits["train_unlabeled"]
  if len(unl) == 0:
    raise ValueError("config.pseudo.mode: there are no unlabeled training images to pseudo-label")
  pool = concat(lab, unl)
  feats = pool_features(config, model, variables, pool)
  idx, sim = cached_knn(feats, int(p.k), cache_dir)
  seeds = np.concatenate([lab.labels, np.zeros_like(unl.labels)]).astype(np.float32)
  scores = propagate(idx, sim, seeds, alpha=float(p.alpha), gamma=float(p.gamma), iters=int(p.iters))
  chosen, pseudo = select(scores, np.arange(len(lab), len(pool)), float(p.fraction))
  rows = chosen - len(lab)
  truth = unl.labels[rows]
  stats = {
    # The unlabeled rows' edges, judged by their hidden labels (a diagnostic only).
    "pool_graph_purity": edge_purity(idx[len(lab) :], pool.labels, np.arange(len(lab), len(pool))),
    "pseudo_labels": float(len(rows)),
    "pseudo_label_acc": float(((truth * pseudo).sum(1) > 0).mean()) if len(rows) else float("nan"),
    "pseudo_seconds": time.perf_counter() - t0,
  }
  if write and jax.process_index() == 0:
    path = _path(workdir, step)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, ids=unl.ids[rows], labels=pseudo, stats=json.dumps(stats))
    os.replace(tmp, path)
  return _with_pseudo(splits, rows, pseudo), stats


def load(splits: Mapping[str, Examples], workdir: str, step: int) -> dict[str, Examples]:
  """The splits of a refresh saved at `step` (see `refresh`)."""
  with np.load(_path(workdir, step)) as f:
    ids, labels = f["ids"], f["labels"]
  unl = splits["train_unlabeled"]
  where = {int(i): r for r, i in enumerate(unl.ids)}
  missing = [int(i) for i in ids if int(i) not in where]
  if missing:
    raise ValueError(
      f"{_path(workdir, step)}: ids {missing[:5]} are not in train_unlabeled; the splits changed"
    )
  return _with_pseudo(splits, np.asarray([where[int(i)] for i in ids], np.int64), labels)


def _with_pseudo(splits: Mapping[str, Examples], rows: np.ndarray, labels: np.ndarray) -> dict[str, Examples]:
  unl = splits["train_unlabeled"]
  chosen = unl.subset(rows)
  chosen = Examples(chosen.images, np.asarray(labels, np.float32), chosen.ids, chosen.origin)
  return dict(splits, train_labeled=concat(splits["train_labeled"], chosen))


def describe(stats: Mapping[str, Any]) -> str:
  return (
    f"pool graph: {int(stats['pseudo_labels'])} pseudo-labels (accuracy {stats['pseudo_label_acc']:.3f}, "
    f"edge purity {stats['pool_graph_purity']:.3f}) in {stats['pseudo_seconds']:.0f} s"
  )
