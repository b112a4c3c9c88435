"""Independent NumPy reference of the SSDH and DPSH losses, written from ../shared/docs/ssdh-method.md.

Straightforward float64 loops over anchors, no vectorisation tricks and nothing shared with ssdh_jax. The
reference is fed the sampled indices (sampling is random; its *properties* are checked separately against the
candidate sets computed here). Gradients w.r.t. the codes follow the release's hand-written Caffe backward
(including its `dist + 1e-4` denominator); `numeric_grad` checks that analytic gradient by central differences.
"""

from __future__ import annotations

import math

import numpy as np


def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def shares(y1, y2) -> bool:
  """Two multi-hot rows share at least one label."""
  return any(y1[c] > 0.5 and y2[c] > 0.5 for c in range(len(y1)))


def sq_dist(a, b) -> float:
  return float(sum((a[t] - b[t]) ** 2 for t in range(len(a))))


# ------------------------------------------------------------------------------------------------ candidate sets


def sorted_rows(feats, i, row_ids=None):
  """Rows ordered by (exact squared distance to row i, row id)."""
  n = len(feats)
  rid = list(range(n)) if row_ids is None else [int(r) for r in row_ids]
  return sorted(range(n), key=lambda j: (sq_dist(feats[i], feats[j]), rid[j]))


def knn_size(n, knn_k):
  return max(1, min(knn_k, n // 3))


def neg_window(n, cfg):
  if cfg.variant == "single_label":
    third = max(1, n // 3)
    return n - third, n
  a, b = cfg.neg_window
  lo, hi = math.floor(a * n / cfg.window_ref_n), math.floor(b * n / cfg.window_ref_n)
  hi = min(max(hi, lo + 1), n)
  return max(0, min(lo, hi - 1)), hi


def triplet_sets(labels, labeled, a):
  """Labeled positives (sharing a label with a, a included) and labeled negatives (sharing none)."""
  pos, neg = [], []
  if not labeled[a]:
    return pos, neg
  for j in range(len(labels)):
    if not labeled[j]:
      continue
    (pos if shares(labels[a], labels[j]) else neg).append(j)
  return pos, neg


def pl_sets(logits, labels, labeled, u):
  """Pseudo-label positives / negatives of an unlabeled anchor u (the release's two-branch test per row)."""
  pos, neg = [], []
  if labeled[u]:
    return pos, neg
  top_u, bot_u = int(np.argmax(logits[u])), int(np.argmin(logits[u]))
  for j in range(len(labels)):
    if not labeled[j]:
      top_j = int(np.argmax(logits[j]))
      if top_j == top_u:
        pos.append(j)
      elif top_j == bot_u:
        neg.append(j)
    else:
      has_top, has_bot = labels[j][top_u] > 0.5, labels[j][bot_u] > 0.5
      if has_top and not has_bot:
        pos.append(j)
      elif has_bot and not has_top:
        neg.append(j)
  return pos, neg


# ------------------------------------------------------------------------------------------------ losses


def ssdh_reference(h, logits, labels, labeled, samples, cfg):
  """Terms, counts, purity and gradients of the SSDH loss for the given sampled indices.

  Args:
    h: (N, k) codes; logits: (N, C) class logits or None; labels (N, C); labeled (N,) bool.
    samples: dict of index arrays as returned by ssdh_jax.losses.ssdh_sample (anchors = all rows).
    cfg: config.loss.

  Returns:
    dict with 'loss_rank', 'loss_emb', 'loss_pl', 'loss_cls', 'loss', 'n_triplets', 'n_pl_pairs',
    'n_labeled', 'graph_purity', 'grad_codes' (N, k), 'grad_logits' (N, C) or None.
  """
  h = np.asarray(h, np.float64)
  n, k = h.shape
  single = cfg.variant == "single_label"
  use_pl = cfg.use_pl and not single and logits is not None
  use_cls = cfg.use_cls and not single and logits is not None
  m, lam, rm = cfg.margin, cfg.lam, cfg.rank_margin
  grad = np.zeros_like(h)
  out = {}

  # Ranking term.
  trip = [
    (int(a), int(samples["rank_pos"][t]), int(samples["rank_neg"][t]))
    for t, a in enumerate(samples["anchors"])
    if samples["rank_valid"][t] and cfg.use_rank
  ]
  rloss = 0.0
  alpha = 1.0 / len(trip) if trip else 0.0
  for a, p, q in trip:
    v = rm + sq_dist(h[a], h[p]) - sq_dist(h[a], h[q])
    if v > 0:
      rloss += v
      for t in range(k):
        grad[a, t] += alpha * ((h[a, t] - h[p, t]) - (h[a, t] - h[q, t]))
        grad[p, t] -= alpha * (h[a, t] - h[p, t])
        grad[q, t] += alpha * (h[a, t] - h[q, t])
  out["loss_rank"] = rloss / (2 * len(trip)) if trip else 0.0

  def pair_term(triples, weight_count):
    loss = 0.0
    gamma = lam / weight_count if weight_count else 0.0
    for a, p, q in triples:
      d = math.sqrt(sq_dist(h[a], h[q]))
      mdist = m - d
      loss += sq_dist(h[a], h[p]) + max(mdist, 0.0) ** 2
      for t in range(k):
        grad[a, t] += gamma * (h[a, t] - h[p, t])
        grad[p, t] -= gamma * (h[a, t] - h[p, t])
      if mdist > 0:
        beta = -gamma * mdist / (d + 1e-4)
        for t in range(k):
          grad[a, t] += beta * (h[a, t] - h[q, t])
          grad[q, t] -= beta * (h[a, t] - h[q, t])
    return lam * loss / (2 * weight_count) if weight_count else 0.0

  emb = [
    (int(a), int(samples["emb_pos"][t]), int(samples["emb_neg"][t])) for t, a in enumerate(samples["anchors"])
  ]
  out["loss_emb"] = pair_term(emb, n) if cfg.use_emb else 0.0

  pl = [
    (int(a), int(samples["pl_pos"][t]), int(samples["pl_neg"][t]))
    for t, a in enumerate(samples["anchors"])
    if use_pl and samples["pl_valid"][t]
  ]
  out["loss_pl"] = pair_term(pl, len(pl)) if pl else 0.0

  grad_logits = None
  lab_rows = [i for i in range(n) if labeled[i]]
  out["loss_cls"] = 0.0
  if logits is not None:
    grad_logits = np.zeros(np.shape(logits))
  if use_cls and lab_rows:
    closs = 0.0
    for i in lab_rows:
      for c in range(len(labels[i])):
        s = sigmoid(float(logits[i][c]))
        closs += (s - labels[i][c]) ** 2
        grad_logits[i, c] = (s - labels[i][c]) * s * (1 - s) / len(lab_rows)
    out["loss_cls"] = closs / (2 * len(lab_rows))

  out["loss"] = out["loss_rank"] + out["loss_emb"] + out["loss_pl"] + out["loss_cls"]
  out["n_triplets"] = len(trip)
  out["n_pl_pairs"] = len(pl)
  out["n_labeled"] = len(lab_rows)
  hits = den = 0
  for t, a in enumerate(samples["anchors"]):
    p = int(samples["emb_pos"][t])
    if labeled[a] and labeled[p] and p != a:
      den += 1
      hits += shares(labels[a], labels[p])
  out["graph_purity"] = hits / den if den else 0.0
  out["grad_codes"] = grad
  out["grad_logits"] = grad_logits
  return out


def ssdh_value(h, logits, labels, labeled, samples, cfg) -> float:
  return ssdh_reference(h, logits, labels, labeled, samples, cfg)["loss"]


def numeric_grad(f, x, indices=None, eps=1e-6):
  """Central differences of scalar f at float64 array x (at `indices`, default every entry; others are 0)."""
  x = np.array(x, np.float64)
  g = np.zeros_like(x)
  for idx in np.ndindex(x.shape) if indices is None else indices:
    old = x[idx]
    x[idx] = old + eps
    fp = f(x)
    x[idx] = old - eps
    fm = f(x)
    x[idx] = old
    g[idx] = (fp - fm) / (2 * eps)
  return g


def dpsh_reference(u, labels, labeled, eta):
  """DPSH value and gradient w.r.t. u with explicit loops over labeled pairs (i = j included)."""
  u = np.asarray(u, np.float64)
  n, k = u.shape
  rows = [i for i in range(n) if labeled[i]]
  pairs = [(i, j) for i in rows for j in rows]
  g = np.zeros_like(u)
  pair_loss = 0.0
  for i, j in pairs:
    theta = 0.5 * sum(u[i, t] * u[j, t] for t in range(k))
    s = 1.0 if shares(labels[i], labels[j]) else 0.0
    pair_loss += math.log1p(math.exp(-abs(theta))) + max(theta, 0.0) - s * theta
    dtheta = sigmoid(theta) - s
    for t in range(k):
      g[i, t] += 0.5 * dtheta * u[j, t] / len(pairs)
      g[j, t] += 0.5 * dtheta * u[i, t] / len(pairs)
  pair_loss = pair_loss / len(pairs) if pairs else 0.0
  quant = 0.0
  for i in range(n):
    for t in range(k):
      b = 1.0 if u[i, t] > 0 else (-1.0 if u[i, t] < 0 else 0.0)
      quant += (u[i, t] - b) ** 2
      g[i, t] += eta * 2 * (u[i, t] - b) / n
  return {
    "loss_pair": pair_loss,
    "loss_quant": eta * quant / n,
    "loss": pair_loss + eta * quant / n,
    "grad": g,
  }
