"""The ceiling a representation sets for its hash codes: a linear probe and its class-probability embedding.

A multinomial logistic regression on frozen features of the labeled images (regularisation chosen on the
validation split, never on the queries), scored two ways: its accuracy on the queries, and the mAP@all of the
retrieval that ranks the database by the inner product of the probe's class probabilities — what a perfect
hash of this representation could at best reproduce with the same labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

DEFAULT_CS = (0.01, 0.03, 0.1, 0.3, 1.0)


def _class_ids(labels: np.ndarray) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.ndim != 2 or not np.all(labels.sum(1) == 1):
    raise ValueError("probe: single-label (one-hot) labels expected")
  return labels.argmax(1)


def fit_probe(
  train_x: np.ndarray,
  train_labels: np.ndarray,
  val_x: np.ndarray,
  val_labels: np.ndarray,
  *,
  cs: Sequence[float] = DEFAULT_CS,
  max_iter: int = 2000,
) -> tuple[Any, dict[str, Any]]:
  """Standardised features -> multinomial logistic regression, C picked by validation accuracy.

  Args:
    train_x, val_x: (N, F) float features (any trailing shape is flattened).
    train_labels, val_labels: (N, C) one-hot.

  Returns:
    (a fitted sklearn Pipeline, {'C': chosen C, 'val_accuracy': {C: accuracy}}).
  """
  from sklearn.linear_model import LogisticRegression
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler

  xs, ys = _flat(train_x), _class_ids(train_labels)
  xv, yv = _flat(val_x), _class_ids(val_labels)
  scores, models = {}, {}
  for c in cs:
    model = make_pipeline(StandardScaler(), LogisticRegression(C=float(c), max_iter=max_iter))
    model.fit(xs, ys)
    scores[float(c)] = float(np.mean(model.predict(xv) == yv))
    models[float(c)] = model
  best = max(scores, key=lambda c: (scores[c], -c))  # ties: the stronger regularisation
  return models[best], {"C": best, "val_accuracy": scores}


def _flat(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float32)
  return x.reshape(len(x), -1)


def embedding_map(
  q_emb: np.ndarray, db_emb: np.ndarray, q_labels: np.ndarray, db_labels: np.ndarray, *, chunk: int = 100
) -> float:
  """mAP@all of ranking the database by descending inner product with each query's embedding.

  Relevant: sharing at least one label. Equal scores keep database order (stable sort); with continuous
  probabilities ties are rare and move the mean by far less than its reported precision.

  Args:
    q_emb (Q, E), db_emb (D, E): float embeddings; q_labels (Q, C), db_labels (D, C): multi-hot.
  """
  q_emb, db_emb = np.asarray(q_emb, np.float64), np.asarray(db_emb, np.float64)
  ql, dl = np.asarray(q_labels) > 0.5, np.asarray(db_labels) > 0.5
  aps = []
  for s in range(0, len(q_emb), chunk):
    scores = q_emb[s : s + chunk] @ db_emb.T
    order = np.argsort(-scores, axis=1, kind="stable")
    rel = (ql[s : s + chunk].astype(np.int32) @ dl.T.astype(np.int32) > 0)[
      np.arange(len(order))[:, None], order
    ]
    hits = np.cumsum(rel, axis=1)
    ranks = np.arange(1, rel.shape[1] + 1)
    n_rel = rel.sum(1)
    ap = np.where(n_rel > 0, (rel * hits / ranks).sum(1) / np.maximum(n_rel, 1), 0.0)
    aps.append(ap)
  return float(np.mean(np.concatenate(aps)))


def ceiling(
  features: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray], *, cs: Sequence[float] = DEFAULT_CS
) -> dict[str, Any]:
  """Probe on features['train_labeled'] (C chosen on features['validation']), scored on 'query' against
  'database' (the split names of `ssdh_jax.data.splits`).

  Returns:
    {'probe_accuracy': query accuracy, 'probe_map': mAP@all of the class-probability embedding,
     'C': chosen C, 'val_accuracy': {C: validation accuracy}, 'dim': feature width}.
  """
  model, info = fit_probe(
    features["train_labeled"], labels["train_labeled"], features["validation"], labels["validation"], cs=cs
  )
  q_prob = model.predict_proba(_flat(features["query"]))
  db_prob = model.predict_proba(_flat(features["database"]))
  acc = float(np.mean(q_prob.argmax(1) == _class_ids(labels["query"])))
  return {
    "probe_accuracy": acc,
    "probe_map": embedding_map(q_prob, db_prob, labels["query"], labels["database"]),
    "dim": int(_flat(features["query"][:1]).shape[1]),
    **info,
  }
