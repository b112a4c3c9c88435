"""Brute-force oracle for ssdh_jax.metrics: explicit Python loops over queries, items, positions and bits.

Written from the conventions in docs/protocols.md only (no code shared with the library): codes are (N, k)
{0,1} arrays, labels (N, C) multi-hot; relevance = share at least one label; ranking = ascending Hamming
distance, ties by database index; AP@R normalised by the relevant items inside the top R (0 if none).
"""

from __future__ import annotations

import itertools
import math


def hamming(a, b) -> int:
  d = 0
  for x, y in zip(a, b):
    if bool(x) != bool(y):
      d += 1
  return d


def relevant(qa, da) -> bool:
  for x, y in zip(qa, da):
    if x > 0 and y > 0:
      return True
  return False


def distances_and_relevance(q_bits, db_bits, q_labels, db_labels):
  """Lists of per-query lists: dist[q][j], rel[q][j]."""
  dist = [[hamming(q, d) for d in db_bits] for q in q_bits]
  rel = [[relevant(ql, dl) for dl in db_labels] for ql in q_labels]
  return dist, rel


def ranking(dist_row) -> list[int]:
  """Database indices by (distance, index): an explicit insertion sort, stable by construction."""
  order: list[int] = []
  for j in range(len(dist_row)):
    pos = len(order)
    while pos > 0 and dist_row[order[pos - 1]] > dist_row[j]:
      pos -= 1
    order.insert(pos, j)
  return order


def ap_of_list(rel_list, cutoff) -> tuple[float, int]:
  """AP of a ranked relevance list over its first `cutoff` positions, and the relevant count there."""
  hits = 0
  total = 0.0
  for p in range(min(cutoff, len(rel_list))):
    if rel_list[p]:
      hits += 1
      total += hits / (p + 1)
  return (total / hits if hits else 0.0), hits


def metrics(q_bits, db_bits, q_labels, db_labels, *, R=0, ks=(), radius=2, positions=(), drop=False):
  """Every metric for every query, by brute force. Returns a dict of plain Python values."""
  dist, rel = distances_and_relevance(q_bits, db_bits, q_labels, db_labels)
  n_db = len(db_bits)
  k = len(q_bits[0])
  cutoff = n_db if R <= 0 or R >= n_db else R
  aps, nrels, kept = [], [], []
  p_at_k = [0.0] * len(ks)
  pr_rank_p = [0.0] * len(positions)
  pr_rank_r = [0.0] * len(positions)
  ball_p, ball_r, ball_ap = [], [], []
  rad_p = [0.0] * (k + 1)
  rad_r = [0.0] * (k + 1)
  orders = []
  for q in range(len(q_bits)):
    order = ranking(dist[q])
    orders.append(order)
    rl = [rel[q][j] for j in order]
    ap, hits = ap_of_list(rl, cutoff)
    aps.append(ap)
    nrels.append(hits)
    kept.append(hits > 0 or not drop)
    total_rel = sum(1 for x in rel[q] if x)
    for i, kk in enumerate(ks):
      ke = min(kk, n_db)
      p_at_k[i] += sum(1 for x in rl[:ke] if x) / ke
    for i, p in enumerate(positions):
      c = sum(1 for x in rl[:p] if x)
      pr_rank_p[i] += c / p
      pr_rank_r[i] += c / total_rel if total_rel else 0.0
    for r in range(k + 1):
      in_ball = [j for j in range(n_db) if dist[q][j] <= r]
      n_rel_ball = sum(1 for j in in_ball if rel[q][j])
      prec = n_rel_ball / len(in_ball) if in_ball else 0.0
      rec = n_rel_ball / total_rel if total_rel else 0.0
      rad_p[r] += prec
      rad_r[r] += rec
      if r == min(radius, k):
        ball_p.append(prec)
        ball_r.append(rec)
        ball_ap.append(ap_of_list(rl, len(in_ball))[0])
  nq = len(q_bits)
  kept_aps = [a for a, keep in zip(aps, kept) if keep]
  return {
    "dist": dist,
    "rel": rel,
    "order": orders,
    "ap": aps,
    "n_rel": nrels,
    "map": sum(kept_aps) / len(kept_aps) if kept_aps else 0.0,
    "precision_at_k": [v / nq for v in p_at_k],
    "pr_rank_precision": [v / nq for v in pr_rank_p],
    "pr_rank_recall": [v / nq for v in pr_rank_r],
    "pr_radius_precision": [v / nq for v in rad_p],
    "pr_radius_recall": [v / nq for v in rad_r],
    "precision_radius": sum(ball_p) / nq,
    "recall_radius": sum(ball_r) / nq,
    "map_radius": sum(ball_ap) / nq,
  }


def expected_ap_enumerated(dist_row, rel_row, R=0) -> tuple[float, float]:
  """Expected AP@R over uniformly random orders inside each tie group, by enumerating every arrangement.

  Only which positions of a group hold relevant items matters, and each such pattern is equally likely, so
  the enumeration runs over combinations of positions per group. Returns (E[AP], P(relevant in top R)).
  """
  n_db = len(dist_row)
  cutoff = n_db if R <= 0 or R >= n_db else R
  groups = {}
  for j in range(n_db):
    groups.setdefault(dist_row[j], []).append(rel_row[j])
  choices = []
  for d in sorted(groups):
    items = groups[d]
    n, r = len(items), sum(1 for x in items if x)
    patterns = []
    for pos in itertools.combinations(range(n), r):
      pat = [False] * n
      for p in pos:
        pat[p] = True
      patterns.append(pat)
    choices.append(patterns)
  total, any_rel, count = 0.0, 0.0, 0
  for combo in itertools.product(*choices):
    rl = [x for pat in combo for x in pat]
    ap, hits = ap_of_list(rl, cutoff)
    total += ap
    any_rel += 1.0 if hits else 0.0
    count += 1
  return total / count, any_rel / count


def num_arrangements(dist_row, rel_row) -> int:
  groups = {}
  for d, r in zip(dist_row, rel_row):
    n, k = groups.get(d, (0, 0))
    groups[d] = (n + 1, k + (1 if r else 0))
  out = 1
  for n, r in groups.values():
    out *= math.comb(n, r)
  return out
