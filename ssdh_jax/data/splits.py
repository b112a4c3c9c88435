"""Retrieval protocols as data, and the seeded split generator (../shared/docs/protocols.md).

A protocol turns a pool of N labeled rows (one dataset, all of its images) into five splits of row indices:

  query            the retrieval queries (reported numbers; never used for training or model selection).
  train_labeled    images whose labels training may use.
  train_unlabeled  images training sees without labels (the pipeline zeroes their labels).
  database         the retrieval database (the `Examples` keep true labels for evaluation).
  validation       labeled images for model selection (validation mAP); never queries, never trained on.

Per protocol (C classes; "balanced" = n/C per class, exactly for single-label data; for multi-label data n/C
images drawn per label in class order, so every label has >= n/C members):

  digits        query 100 (10/class); labeled 300 (30/class); validation 100 (10/class) from the non-query,
                non-labeled rest; unlabeled = the rest minus validation; database = all minus queries (1,697).
  cifar10       over all 60,000: query 1,000 (100/class); labeled 5,000 (500/class); database = the other
                54,000 (labeled excluded); unlabeled = database minus validation; validation 500 (50/class)
                from the database.
  cifar10-1     query 1,000 (100/class); database = the other 59,000; labeled 5,000 (500/class) drawn from the
                database; unlabeled = database minus labeled minus validation; validation 500 (50/class) from
                the database minus labeled.
  cifar10-2     official split (needs `origin`): query = the 10,000 'test' rows; labeled = database = the
                50,000 'train' rows; no unlabeled pool; validation 500 (50/class) carved from the labeled set,
                so train_labeled = 49,500 (the database keeps all 50,000).
  nuswide-21    21 labels, multi-label: query 2,100 (100/label); database = the rest (193,734 on the full
                195,834 pool); labeled 10,500 (500/label) from the database; validation 1,050 (50/label) from
                the database minus labeled; mAP@5000.
  mirflickr-25k 38 labels: query 1,000 and labeled 5,000 drawn uniformly; database = the rest (19,000) = the
                unlabeled pool; validation 500 from it.
  imagenet-100  100 classes: query 5,000 (50/class) from rows whose origin is 'val' or 'test' when the pool has
                such rows (HashNet lists), else from the whole pool; database = the rest (128,495 on the
                HashNet pool); labeled 13,000 (130/class, HashNet's train list size; the field uses
                10,000-13,000) from the database; validation 1,000 (10/class); mAP@1000.
  coco          80 labels: query 5,000 and labeled 10,000 uniform; database = the rest (117,218 of 122,218);
                labeled drawn from the database; validation 1,000; mAP@5000.

Validation choice (documented default, configurable): validation images are drawn *in addition to* the
protocol's labeled images, from the pool the protocol leaves unlabeled (`val_from='unlabeled'`), and are removed
from train_unlabeled. So train_labeled and database keep exactly the sizes peers train and evaluate with; the
cost is val_size extra labels used only for model selection. `val_from='labeled'` instead carves validation out
of the labeled set (train_labeled = labeled - val_size): a stricter label budget. cifar10-2 has no unlabeled
pool and always carves. When the database is "the rest", validation images stay in it (the protocol fixes the
database); a validation pass should rank against train_labeled or drop self-matches by id.

Rows with no label at all (possible in MIRFlickr) never become queries, labeled or validation images (no
relevant item / no supervision); they stay in the database and the unlabeled pool.

Randomness: each draw (query, labeled, validation) has its own stream seeded by (seed, protocol name, stage), so
the same seed gives the same splits, and changing val_size does not move the queries or labeled images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import types
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

SPLIT_NAMES = ("query", "train_labeled", "train_unlabeled", "database", "validation")


@dataclasses.dataclass(frozen=True)
class Protocol:
  """One retrieval protocol.

  Attributes:
    name: protocol name.
    num_classes: label width C.
    multi_label: labels are multi-hot (else one-hot).
    num_query: queries.
    num_labeled: labeled training images (before carving validation when val_from == 'labeled').
    val_size: default validation size (config.data.val_size = -1 picks it).
    balanced: query / labeled / validation drawn per class (n/C each).
    labeled_in_database: labeled images are drawn from the database (else the database excludes them).
    val_from: 'unlabeled' (extra images from the unlabeled pool) or 'labeled' (carved from the labeled set).
    official: query and labeled sets are the pool's official origin splits (query_origins / the rest).
    query_origins: queries come from rows with these origins when the pool has any.
    pool_size: the full dataset's size (0: varies); recorded in the metadata, not enforced.
    database_size: the database size on the full pool (0: varies); recorded.
    metric_r: the protocol's mAP@R (0: all).
  """

  name: str
  num_classes: int
  multi_label: bool
  num_query: int
  num_labeled: int
  val_size: int
  balanced: bool
  labeled_in_database: bool
  val_from: str = "unlabeled"
  official: bool = False
  query_origins: tuple[str, ...] = ()
  pool_size: int = 0
  database_size: int = 0
  metric_r: int = 0


PROTOCOLS: Mapping[str, Protocol] = types.MappingProxyType(
  {
    p.name: p
    for p in (
      Protocol("digits", 10, False, 100, 300, 100, True, True, pool_size=1797, database_size=1697),
      Protocol("cifar10", 10, False, 1000, 5000, 500, True, False, pool_size=60000, database_size=54000),
      Protocol("cifar10-1", 10, False, 1000, 5000, 500, True, True, pool_size=60000, database_size=59000),
      Protocol(
        "cifar10-2",
        10,
        False,
        10000,
        50000,
        500,
        True,
        True,
        val_from="labeled",
        official=True,
        query_origins=("test",),
        pool_size=60000,
        database_size=50000,
      ),
      Protocol(
        "nuswide-21",
        21,
        True,
        2100,
        10500,
        1050,
        True,
        True,
        pool_size=195834,
        database_size=193734,
        metric_r=5000,
      ),
      Protocol(
        "mirflickr-25k", 38, True, 1000, 5000, 500, False, False, pool_size=25000, database_size=19000
      ),
      Protocol(
        "imagenet-100",
        100,
        False,
        5000,
        13000,
        1000,
        True,
        True,
        query_origins=("val", "test"),
        pool_size=133495,
        database_size=128495,
        metric_r=1000,
      ),
      Protocol(
        "coco",
        80,
        True,
        5000,
        10000,
        1000,
        False,
        True,
        pool_size=122218,
        database_size=117218,
        metric_r=5000,
      ),
    )
  }
)


CUSTOM_PREFIX = "custom:"
_CUSTOM_KEYS = {
  "query": int,
  "labeled": int,
  "val": int,
  "balanced": bool,
  "labeled_in_database": bool,
  "r": int,
}


def get_protocol(
  name: str | Protocol, *, num_classes: int | None = None, multi_label: bool = False
) -> Protocol:
  """A built-in protocol by name, or a user's: 'custom:query=Q,labeled=L[,val=V][,balanced=0|1]
  [,labeled_in_database=0|1][,r=R]' (Q queries, L labeled images, V validation images drawn from the
  unlabeled rest, per class when balanced (default 0), labeled images also in the database (default 1), mAP@R
  (default 0: all)). A custom protocol takes its label width from `num_classes` and `multi_label` (the
  config's data fields); its name, the spec string itself, goes into every report."""
  if isinstance(name, Protocol):
    return name
  if name.startswith(CUSTOM_PREFIX):
    if not num_classes:
      raise ValueError(f"protocol {name!r}: a custom protocol needs data.num_classes")
    fields: dict[str, Any] = {}
    for item in filter(None, name[len(CUSTOM_PREFIX) :].split(",")):
      key, _, raw = item.partition("=")
      key = key.strip()
      if key not in _CUSTOM_KEYS or not raw.strip().lstrip("-").isdigit():
        raise ValueError(
          f"protocol {name!r}: bad item {item!r}; expected key=integer with key in {', '.join(_CUSTOM_KEYS)}"
        )
      fields[key] = _CUSTOM_KEYS[key](int(raw))
    if fields.get("query", 0) < 1 or fields.get("labeled", 0) < 1:
      raise ValueError(f"protocol {name!r}: query and labeled must be given, each at least 1")
    return Protocol(
      name=name,
      num_classes=int(num_classes),
      multi_label=bool(multi_label),
      num_query=fields["query"],
      num_labeled=fields["labeled"],
      val_size=fields.get("val", 0),
      balanced=fields.get("balanced", False),
      labeled_in_database=fields.get("labeled_in_database", True),
      metric_r=fields.get("r", 0),
    )
  if name not in PROTOCOLS:
    raise ValueError(
      f"unknown protocol {name!r}; one of {sorted(PROTOCOLS)} or {CUSTOM_PREFIX}query=…,labeled=…"
    )
  return PROTOCOLS[name]


def resolve(protocol: Protocol, val_size: int | None = None, val_from: str | None = None) -> Protocol:
  """The protocol with config overrides applied (val_size < 0 or None and val_from '' or None keep defaults)."""
  changes: dict[str, Any] = {}
  if val_size is not None and val_size >= 0:
    changes["val_size"] = int(val_size)
  if val_from:
    if val_from not in ("unlabeled", "labeled"):
      raise ValueError(f"val_from must be 'unlabeled' or 'labeled', got {val_from!r}")
    changes["val_from"] = val_from
  if protocol.official:
    changes["val_from"] = "labeled"  # no unlabeled pool to draw from
  return dataclasses.replace(protocol, **changes)


# ----------------------------------------------------------------------------------------------- drawing


def _rng(seed: int, protocol: Protocol, stage: int) -> np.random.Generator:
  return np.random.default_rng(
    np.random.SeedSequence([seed & (2**63 - 1), zlib.crc32(protocol.name.encode()), stage])
  )


def _per_class(n: int, protocol: Protocol, what: str) -> int:
  if n % protocol.num_classes:
    raise ValueError(f"{protocol.name}: {what} size {n} is not a multiple of {protocol.num_classes} classes")
  return n // protocol.num_classes


def _draw(
  rng: np.random.Generator, candidates: np.ndarray, n: int, labels: np.ndarray, protocol: Protocol, what: str
) -> np.ndarray:
  """n rows from `candidates` (sorted int64), balanced per class when the protocol says so."""
  if n == 0:
    return np.zeros((0,), np.int64)
  if not protocol.balanced:
    if len(candidates) < n:
      raise ValueError(f"{protocol.name}: {what} needs {n} images, the pool has {len(candidates)}")
    return np.sort(rng.choice(candidates, n, replace=False))
  k = _per_class(n, protocol, what)
  taken = np.zeros(len(labels), bool)
  out = []
  for c in range(protocol.num_classes):
    if protocol.multi_label:
      mask = labels[candidates, c] > 0
    else:
      mask = labels[candidates].argmax(1) == c
    cand = candidates[mask & ~taken[candidates]]
    if len(cand) < k:
      raise ValueError(f"{protocol.name}: {what} needs {k} images of class {c}, the pool has {len(cand)}")
    pick = rng.choice(cand, k, replace=False)
    taken[pick] = True
    out.append(pick)
  return np.sort(np.concatenate(out))


def make_splits(
  labels: np.ndarray,
  protocol: str | Protocol,
  seed: int,
  *,
  origin: np.ndarray | None = None,
  val_size: int | None = None,
  val_from: str | None = None,
) -> dict[str, np.ndarray]:
  """Draws the five splits of a pool (see the module docstring for each protocol's semantics).

  Args:
    labels: float (N,C) multi-hot labels of the pool.
    protocol: a name in PROTOCOLS or a Protocol.
    seed: split seed.
    origin: optional (N,) str source split per row (needed by official protocols).
    val_size: validation size (None / negative: the protocol's default).
    val_from: 'unlabeled' | 'labeled' (None / '': the protocol's default).

  Returns:
    split name -> sorted int64 row indices into the pool.
  """
  p = resolve(get_protocol(protocol), val_size, val_from)
  labels = np.asarray(labels)
  n = len(labels)
  if labels.shape[1] != p.num_classes:
    raise ValueError(
      f"protocol {p.name} has {p.num_classes} classes, the labels have width {labels.shape[1]}"
    )
  rows = np.arange(n, dtype=np.int64)
  has_label = labels.sum(1) > 0
  origin = None if origin is None else np.asarray(origin).astype(str)

  if p.official:
    if origin is None or not np.isin(origin, p.query_origins).any():
      raise ValueError(f"{p.name} uses the official split and needs rows with origin in {p.query_origins}")
    query = rows[np.isin(origin, p.query_origins)]
    rest = np.setdiff1d(rows, query)
    labeled = rest
  else:
    qpool = rows[has_label]
    if p.query_origins and origin is not None and np.isin(origin, p.query_origins).any():
      qpool = qpool[np.isin(origin[qpool], p.query_origins)]
    query = _draw(_rng(seed, p, 0), qpool, p.num_query, labels, p, "query")
    rest = np.setdiff1d(rows, query)
    labeled = _draw(_rng(seed, p, 1), rest[has_label[rest]], p.num_labeled, labels, p, "labeled")
  database = rest if p.labeled_in_database else np.setdiff1d(rest, labeled)

  if p.val_from == "labeled":
    validation = _draw(_rng(seed, p, 2), labeled, p.val_size, labels, p, "validation")
    train_labeled = np.setdiff1d(labeled, validation)
  else:
    vpool = np.setdiff1d(rest, labeled)
    validation = _draw(_rng(seed, p, 2), vpool[has_label[vpool]], p.val_size, labels, p, "validation")
    train_labeled = labeled
  unlabeled = (
    np.zeros((0,), np.int64) if p.official else np.setdiff1d(np.setdiff1d(rest, labeled), validation)
  )
  out = {
    "query": query,
    "train_labeled": train_labeled,
    "train_unlabeled": unlabeled,
    "database": database,
    "validation": validation,
  }
  return {k: np.asarray(v, np.int64) for k, v in out.items()}


# ----------------------------------------------------------------------------------------------- checks


def _fail(msg: str) -> None:
  raise AssertionError(f"split check failed: {msg}")


def _class_counts(labels: np.ndarray, rows: np.ndarray) -> np.ndarray:
  return labels[rows].astype(bool).sum(0) if len(rows) else np.zeros(labels.shape[1], np.int64)


def check_splits(
  splits: Mapping[str, np.ndarray],
  labels: np.ndarray,
  protocol: str | Protocol,
  *,
  origin: np.ndarray | None = None,
  val_size: int | None = None,
  val_from: str | None = None,
) -> None:
  """Raises AssertionError unless `splits` (row indices) satisfy the protocol.

  Checks: no duplicate rows; query, train_labeled and validation pairwise disjoint; train_unlabeled disjoint
  from all three; database disjoint from the queries and holding (or excluding) the labeled images as the
  protocol says; sizes; per-class balance (exact counts for single-label, >= n/C members per label for
  multi-label); official protocols' origins.
  """
  p = resolve(get_protocol(protocol), val_size, val_from)
  s = {k: np.asarray(splits[k], np.int64) for k in SPLIT_NAMES}
  for k, v in s.items():
    if len(np.unique(v)) != len(v):
      _fail(f"{k} holds duplicate rows")
  sets = {k: set(v.tolist()) for k, v in s.items()}
  for a, b in [
    ("query", "train_labeled"),
    ("query", "validation"),
    ("train_labeled", "validation"),
    ("train_unlabeled", "query"),
    ("train_unlabeled", "train_labeled"),
    ("train_unlabeled", "validation"),
    ("database", "query"),
  ]:
    both = sets[a] & sets[b]
    if both:
      _fail(f"{a} and {b} share {len(both)} rows (e.g. row {min(both)})")
  if p.labeled_in_database and not sets["train_labeled"] <= sets["database"]:
    _fail("train_labeled must be inside the database")
  if not p.labeled_in_database and sets["train_labeled"] & sets["database"]:
    _fail("train_labeled must be outside the database")

  carved = p.val_from == "labeled"
  n_val = len(s["validation"])
  if n_val != p.val_size:
    _fail(f"validation has {n_val} rows, expected {p.val_size}")
  if p.official:
    if origin is None:
      _fail(f"{p.name} needs the origin of each row")
    origin = np.asarray(origin).astype(str)
    if not np.isin(origin[s["query"]], p.query_origins).all():
      _fail(f"{p.name}: every query must come from {p.query_origins}")
    if np.isin(origin[s["database"]], p.query_origins).any():
      _fail(f"{p.name}: the database must hold no {p.query_origins} rows")
  else:
    if len(s["query"]) != p.num_query:
      _fail(f"query has {len(s['query'])} rows, expected {p.num_query}")
    n_lab = len(s["train_labeled"]) + (n_val if carved else 0)
    if n_lab != p.num_labeled:
      _fail(f"labeled images: {n_lab}, expected {p.num_labeled}")
  if not p.balanced:
    return
  labeled_all = np.concatenate([s["train_labeled"], s["validation"]]) if carved else s["train_labeled"]
  groups = [("validation", s["validation"], p.val_size), ("labeled", labeled_all, len(labeled_all))]
  if not p.official:
    groups.append(("query", s["query"], p.num_query))
  for what, r, n in groups:
    counts = _class_counts(labels, r)
    k = _per_class(n, p, what)
    bad = counts != k if not p.multi_label else counts < k
    if bad.any():
      c = int(np.flatnonzero(bad)[0])
      _fail(
        f"{what}: class {c} has {int(counts[c])} images, expected {'' if not p.multi_label else '>= '}{k}"
      )


# ----------------------------------------------------------------------------------------------- files


def _split_bytes(ids: np.ndarray) -> bytes:
  return "".join(f"{int(i)}\n" for i in np.sort(np.asarray(ids, np.int64))).encode()


def split_hashes(ids_by_split: Mapping[str, np.ndarray]) -> tuple[dict[str, str], str]:
  """sha256 of each split file's bytes (sorted ids, one per line) and a combined hash over all splits.

  The combined hash is sha256 of the lines `<split name> <sha256>` for SPLIT_NAMES in order.
  """
  per = {k: hashlib.sha256(_split_bytes(ids_by_split[k])).hexdigest() for k in SPLIT_NAMES}
  combined = hashlib.sha256("".join(f"{k} {per[k]}\n" for k in SPLIT_NAMES).encode()).hexdigest()
  return per, combined


def split_hash(rows_by_split: Mapping[str, np.ndarray]) -> str:
  """The run's split hash: `split_hashes` over pool *rows*, not source ids.

  A pool is the examples that were kept, in source order, so the hash depends only on which of them each
  split holds. Source ids can shift without the contents changing (a folder's ids are rows of its sorted
  path list, undecodable files included, so a skipped junk file moves every later id); the split files
  keep the ids (they map back to files) and their own sha256 for integrity. Where ids are 0..N-1 and
  nothing was skipped, ids and rows coincide and so do the two hashes.
  """
  return split_hashes(rows_by_split)[1]


def pool_fingerprint(ids: np.ndarray, labels: np.ndarray, origin: np.ndarray | None = None) -> str:
  """sha256 over the pool's ids, labels and origins (splits are only valid for the pool they were drawn on)."""
  h = hashlib.sha256(np.ascontiguousarray(np.asarray(ids, np.int64)).tobytes())
  h.update(np.ascontiguousarray(np.asarray(labels) > 0).tobytes())
  if origin is not None:
    h.update("\0".join(np.asarray(origin).astype(str).tolist()).encode())
  return h.hexdigest()


def write_split_files(
  split_dir: str,
  ids_by_split: Mapping[str, np.ndarray],
  info: Mapping[str, Any],
  rows_by_split: Mapping[str, np.ndarray] | None = None,
) -> dict:
  """Writes `<split>.txt` (sorted ids, one per line) per split and `splits.json` (info + hashes).

  `split_sha256` holds each file's sha256; `split_hash` is `split_hash(rows_by_split)` (the ids when no
  rows are given). Returns the JSON record written.
  """
  os.makedirs(split_dir, exist_ok=True)
  per, _ = split_hashes(ids_by_split)
  combined = split_hash(ids_by_split if rows_by_split is None else rows_by_split)
  for k in SPLIT_NAMES:
    tmp = os.path.join(split_dir, f".{k}.txt.tmp-{os.getpid()}")  # unique: every process of a run writes
    with open(tmp, "wb") as f:
      f.write(_split_bytes(ids_by_split[k]))
    os.replace(tmp, os.path.join(split_dir, f"{k}.txt"))
  record = dict(info)
  record.update(
    split_sha256=per,
    split_hash=combined,
    counts={k: len(ids_by_split[k]) for k in SPLIT_NAMES},
  )
  tmp = os.path.join(split_dir, f".splits.json.tmp-{os.getpid()}")
  with open(tmp, "w") as f:
    json.dump(record, f, indent=2, sort_keys=True)
  os.replace(tmp, os.path.join(split_dir, "splits.json"))
  return record


def read_split_files(split_dir: str) -> tuple[dict[str, np.ndarray], dict]:
  """Reads split files written by `write_split_files`, verifying each file's sha256 against splits.json."""
  with open(os.path.join(split_dir, "splits.json")) as f:
    record = json.load(f)
  out = {}
  for k in SPLIT_NAMES:
    path = os.path.join(split_dir, f"{k}.txt")
    with open(path, "rb") as f:
      data = f.read()
    sha = hashlib.sha256(data).hexdigest()
    if sha != record["split_sha256"][k]:
      raise ValueError(f"{path}: sha256 {sha} does not match splits.json ({record['split_sha256'][k]})")
    out[k] = np.asarray([int(t) for t in data.split()], np.int64)
  return out, record


def get_splits(
  labels: np.ndarray,
  ids: np.ndarray,
  protocol: str | Protocol,
  seed: int,
  *,
  origin: np.ndarray | None = None,
  val_size: int | None = None,
  val_from: str | None = None,
  split_dir: str = "",
) -> tuple[dict[str, np.ndarray], dict]:
  """Split row indices for a pool, read from `split_dir` when it holds this pool's splits, else drawn+written.

  Files in split_dir made for another protocol, seed, validation setting or pool are an error (never
  silently replaced). With split_dir == '' nothing is written.

  Returns:
    split name -> sorted row indices into the pool; the metadata record (protocol, split_seed, val_size,
    val_from, pool_size, pool_fingerprint, expected sizes, metric_r, split_sha256, split_hash, counts).
  """
  p = resolve(get_protocol(protocol), val_size, val_from)
  ids = np.asarray(ids, np.int64)
  info = {
    "protocol": p.name,
    "split_seed": int(seed),
    "val_size": p.val_size,
    "val_from": p.val_from,
    "pool_size": len(ids),
    "pool_fingerprint": pool_fingerprint(ids, labels, origin),
    "expected_pool_size": p.pool_size,
    "expected_database_size": p.database_size,
    "metric_r": p.metric_r,
  }
  json_path = os.path.join(split_dir, "splits.json") if split_dir else ""
  if json_path and os.path.exists(json_path):
    ids_by_split, record = read_split_files(split_dir)
    for key in ("protocol", "split_seed", "val_size", "val_from", "pool_fingerprint"):
      if record.get(key) != info[key]:
        raise ValueError(
          f"{json_path} holds splits with {key}={record.get(key)!r}, this run has {info[key]!r}; "
          "use another data.split_dir (or remove that one)"
        )
    row_of = {int(i): r for r, i in enumerate(ids)}
    rows = {k: np.sort(np.asarray([row_of[int(i)] for i in v], np.int64)) for k, v in ids_by_split.items()}
  else:
    rows = make_splits(labels, p, seed, origin=origin)
    ids_by_split = {k: ids[v] for k, v in rows.items()}
    if json_path:
      record = write_split_files(split_dir, ids_by_split, info, rows)
    else:
      per, _ = split_hashes(ids_by_split)
      record = dict(
        info, split_sha256=per, split_hash=split_hash(rows), counts={k: len(v) for k, v in rows.items()}
      )
  check_splits(rows, labels, p, origin=origin)
  return rows, record
