"""Benchmark: retrieval evaluation and Hamming search, ssdh_jax vs FAISS at its best (optionally also the PyTorch
zoos' NumPy evaluator), measured in paired, interleaved rounds on the same thread count.

Tasks (random codes and labels; the timings do not depend on code quality):
  * mAP@5000 at NUS-WIDE scale: 2,100 queries x 193,734 database items, 48 bits, 21 multi-hot labels.
  * mAP@all at CIFAR-10 scale: 1,000 queries x 54,000 items, 48 bits, 10 classes.
  * top-100 Hamming search over 1M (1,000 queries) and 10M (100 queries) database codes, 48 bits.
Sides, timed alternately within each round (bench/harness.py; >= 8 rounds, median and spread of the ratio):
  * ssdh_jax as shipped: `metrics.mean_average_precision` / `index.knn` with backend='auto' (FAISS for mAP@R
    where it is installed and faster, JAX otherwise; the row says which), and for mAP@R the JAX path alone
    (backend='jax'). Warm calls; the first call (compilation) is reported apart.
  * FAISS at its best: `IndexBinaryFlat` over codes zero-padded to 64 bits (8 bytes: FAISS's fast Hamming
    kernel; 48-bit codes in 6 bytes take its generic path), with the fastest (use_heap, query_batch_size) of
    `FAISS_CONFIGS` for the k in use (all timed first, `--select-rounds` interleaved rounds on a subset of the
    queries), the index built outside the timing; for mAP the AP of its top-R lists in NumPy (relevance from
    bit-packed labels, float64 sums).
  * optional (`--numpy`): the per-query evaluator of DeepHash-pytorch (`CalcTopMap`: +-1 codes, Hamming via a
    dot product, np.argsort, cumulative precision), reproduced verbatim, on a subset of the queries (slow).
Every side gets the same threads (`harness.pin_threads` before any import: XLA, OpenMP, BLAS) and cores. By
default the whole bench runs twice, in one process per thread count: 1 thread, then 2 (FAISS through
faiss.omp_set_num_threads, XLA through its intra-op pool). Correctness: the mAP of every side and of a stable
NumPy reference (50 queries) agree to 1e-5 (asserted), search distances and ids equal the FAISS ones.

  python -m bench.bench_metrics --quick        # smaller sizes, 3 rounds: ~3 minutes on 2 busy cores
  python -m bench.bench_metrics                # full sizes, 8 rounds, 1 and 2 threads (~20+ minutes)
  python -m bench.bench_metrics --threads 1    # one thread count only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from bench import harness

_ARGS = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
_ARGS.add_argument("--quick", action="store_true", help="smaller sizes and 3 rounds")
_ARGS.add_argument("--threads", type=int, default=0, help="threads per side (default: 1, then 2)")
_ARGS.add_argument("--rounds", type=int, default=0, help="paired rounds (default 8; --quick: 3)")
_ARGS.add_argument("--select-rounds", type=int, default=2, help="rounds choosing FAISS's configuration")
_ARGS.add_argument("--numpy", action="store_true", help="add the NumPy CalcTopMap rows (slow)")
_ARGS.add_argument("--seed", type=int, default=0)
_ARGS.add_argument("--json", action="store_true", help="(internal) print the rows as JSON")

BITS = 48
JSON_TAG = "BENCH_METRICS_JSON "


def _child_argv(args, threads: int) -> list[str]:
  argv = harness.module_argv("bench.bench_metrics", "--threads", str(threads), "--json")
  argv += ["--quick"] * args.quick + ["--numpy"] * args.numpy
  argv += ["--rounds", str(args.rounds), "--select-rounds", str(args.select_rounds), "--seed", str(args.seed)]
  return argv


def _print_tables(results: list[dict], argv: list[str]) -> None:
  print(f"Command: `{' '.join(['python -m bench.bench_metrics', *argv[1:]])}`  ")
  for res in results:
    print(f"\n**{res['threads']} thread(s) per side** — {res['header']}  ")
    print(f"{res['versions']}\n")
    columns = ("task", "ssdh_jax s (context)", "peer config", "peer s (context)",
               "t_peer / t_ssdh median (IQR; min–max), n", "results equal?")  # fmt: skip
    print(*harness.md_head(columns), sep="\n")
    for r in res["rows"]:
      print(f"| {r['task']} | {r['ssdh']}: {r['ssdh_s']:.3f} | {r['peer']} | {r['peer_s']:.3f} | {r['ratio']} "
            f"| {r['equal']} |")  # fmt: skip
    if res["notes"]:
      print()
      for note in res["notes"]:
        print(f"- {note}")


def _parent(args) -> None:
  results = harness.run_thread_counts(lambda threads: _child_argv(args, threads), JSON_TAG)
  _print_tables(results, sys.argv)


if __name__ == "__main__":
  ARGS = _ARGS.parse_args()
  if ARGS.rounds <= 0:
    ARGS.rounds = 3 if ARGS.quick else 8
  if ARGS.threads <= 0:
    _parent(ARGS)
    raise SystemExit(0)
  CORES = harness.pin_threads(ARGS.threads)  # before numpy / jax / faiss are imported
  os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from ssdh_jax import index as index_lib  # noqa: E402
from ssdh_jax import metrics  # noqa: E402

# ------------------------------------------------------------------------- the zoos' NumPy evaluator


def CalcHammingDist(B1, B2):
  q = B2.shape[1]
  distH = 0.5 * (q - np.dot(B1, B2.transpose()))
  return distH


def CalcTopMap(rB, qB, retrievalL, queryL, topk):
  num_query = queryL.shape[0]
  topkmap = 0
  for iter in range(num_query):
    gnd = (np.dot(queryL[iter, :], retrievalL.transpose()) > 0).astype(np.float32)
    hamm = CalcHammingDist(qB[iter, :], rB)
    ind = np.argsort(hamm)
    gnd = gnd[ind]

    tgnd = gnd[0:topk]
    tsum = np.sum(tgnd).astype(int)
    if tsum == 0:
      continue
    count = np.linspace(1, tsum, tsum)

    tindex = np.asarray(np.where(tgnd == 1)) + 1.0
    topkmap_ = np.mean(count / (tindex))
    topkmap = topkmap + topkmap_
  topkmap = topkmap / num_query
  return topkmap


def stable_numpy_ap(qB, rB, queryL, retrievalL, topk, n):
  """The same evaluator with a stable argsort (ties by database index): must equal ssdh_jax exactly."""
  aps = []
  for i in range(n):
    gnd = (np.dot(queryL[i], retrievalL.T) > 0)[np.argsort(CalcHammingDist(qB[i], rB), kind="stable")][:topk]
    hits = np.cumsum(gnd)
    aps.append(np.sum(gnd * hits / np.arange(1, topk + 1)) / hits[-1] if hits[-1] else 0.0)
  return np.asarray(aps)


def numpy_search(qB, rB, k):
  """Per-query top-k the zoo way: Hamming via the +-1 dot product, full argsort."""
  return np.stack([np.argsort(CalcHammingDist(q, rB))[:k] for q in qB])


# ------------------------------------------------------------------------------------------- helpers


def random_codes(rng, n):
  words = rng.integers(0, 2**32, (n, 2), dtype=np.uint32)
  words[:, 1] &= np.uint32((1 << (BITS - 32)) - 1)
  return words


def to_pm1(words):
  bits = np.unpackbits(words.view(np.uint8), axis=1, bitorder="little")[:, :BITS]
  return (bits.astype(np.float32) * 2 - 1).astype(np.float32)


def random_labels(rng, n, c=21):
  y = rng.random((n, c)) < 0.1
  y[np.arange(n), rng.integers(0, c, n)] = True  # every image has at least one of the 21 concepts
  return y.astype(np.float32)


def label_words(y):
  """(N, C) multi-hot -> (N, ceil(C/32)) uint32 bit sets (the relevance test is one AND)."""
  by = np.packbits(y > 0, axis=1, bitorder="little")
  return np.ascontiguousarray(np.pad(by, ((0, 0), (0, (-by.shape[1]) % 4)))).view("<u4")


def faiss_module():
  try:
    import faiss

    return faiss
  except ImportError as e:
    harness.peer_missing("FAISS", e)
    return None


class FaissPeer:
  """IndexBinaryFlat over 64-bit-padded codes, built once; `search(k, config)` is one timed unit."""

  def __init__(self, faiss, db_words, q_words):
    self.db = index_lib.faiss_bytes(db_words, BITS)  # default pad_bits=64: 8 bytes per code
    self.q = index_lib.faiss_bytes(q_words, BITS)
    self.index = faiss.IndexBinaryFlat(8 * self.db.shape[1])
    self.index.add(self.db)
    self.default_batch = self.index.query_batch_size

  def configure(self, k, config):
    """config = (use_heap, query batch); the counting k-NN's batch is capped so that its buffers stay under
    256 MiB (FAISS allocates batch x (bits + 1) x k int64 ids: 32 queries at k = 54,000 would take 0.9 GB)."""
    use_heap, batch = config
    self.index.use_heap = use_heap
    per_query = (8 * self.db.shape[1] + 1) * k * 8
    self.index.query_batch_size = batch if use_heap else int(np.clip((1 << 28) // per_query, 1, batch))
    return self.index.query_batch_size

  def search(self, k, config, q=None):
    self.configure(k, config)
    return self.index.search(self.q if q is None else q, k)

  def mean_ap(self, k, config, qlw, dlw, chunk):
    """mAP@k from FAISS top-k lists, the AP in NumPy (float64), `chunk` queries at a time."""
    self.configure(k, config)
    aps = []
    for s in range(0, self.q.shape[0], chunk):
      _, nn = self.index.search(self.q[s : s + chunk], k)
      rel = np.zeros(nn.shape, bool)
      for w in range(qlw.shape[1]):
        rel |= (dlw[:, w][nn] & qlw[s : s + chunk, w, None]) != 0
      hits = np.cumsum(rel, axis=1)
      prec_sum = np.where(rel, hits / np.arange(1, k + 1), 0.0).sum(1)
      aps.append(np.where(hits[:, -1] > 0, prec_sum / np.maximum(hits[:, -1], 1), 0.0))
    return float(np.concatenate(aps).mean())


def warm(fn):
  """(seconds of a first call, its result)."""
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn())
  return time.perf_counter() - t0, out


def median(xs):
  return float(np.median(np.asarray(xs)))


# FAISS configurations tried for every k: (use_heap, query_batch_size); FAISS's default batch is 32.
FAISS_CONFIGS = ((True, 32), (False, 8), (False, 32), (False, 64))


def choose_faiss_config(peer, k, q, rounds, notes, what):
  """Times FAISS's k-NN in every FAISS_CONFIGS entry in interleaved rounds on the queries `q`; returns the
  fastest and a description naming the best use_heap=True and use_heap=False ones."""
  times = harness.interleave({c: (lambda c=c: peer.search(k, c, q)) for c in FAISS_CONFIGS}, rounds)
  best = min(FAISS_CONFIGS, key=lambda c: median(times[c]))
  other = min((c for c in FAISS_CONFIGS if c[0] != best[0]), key=lambda c: median(times[c]))
  slower = harness.ratio_stats(times, other, best)["median"]
  batch = peer.configure(k, best)
  desc = f"use_heap={best[0]}, query batch {batch} (best use_heap={other[0]}: {slower:.2f}x slower)"
  timings = ", ".join(f"use_heap={c[0]}/batch {c[1]} {median(times[c]):.3f} s" for c in FAISS_CONFIGS)
  notes.append(f"{what}: FAISS configurations over {len(q):,} queries, {rounds} rounds: {timings}")
  return best, desc


# ---------------------------------------------------------------------------------------------- tasks


def bench_map(ctx, n_q, n_db, R, single_label=False):
  args, faiss, rng, rows, notes = ctx["args"], ctx["faiss"], ctx["rng"], ctx["rows"], ctx["notes"]
  labels = "10 classes" if single_label else "21 labels"
  task = f"mAP@{R or 'all'}, {n_q:,} x {n_db:,}, {BITS} bits, {labels}"
  print(f"{task} ...", file=sys.stderr, flush=True)
  k = R or n_db
  qw, dw = random_codes(rng, n_q), random_codes(rng, n_db)
  if single_label:
    ql = np.eye(10, dtype=np.float32)[rng.integers(0, 10, n_q)]
    dl = np.eye(10, dtype=np.float32)[rng.integers(0, 10, n_db)]
  else:
    ql, dl = random_labels(rng, n_q), random_labels(rng, n_db)
  qwj, dwj = jnp.asarray(qw), jnp.asarray(dw)

  used = metrics.resolve_backend("auto", dwj, metrics._effective_r(R, n_db), n_db)
  method = metrics._resolve_method("auto", dwj, metrics._effective_r(R, n_db), n_db)
  sides = {"auto": lambda: metrics.mean_average_precision(qwj, dwj, ql, dl, bits=BITS, R=R, backend="auto")}
  names = {
    "auto": f"ssdh_jax mean_average_precision, backend auto → {used}" + (f" ({method})" * (used == "jax"))
  }
  if used != "jax":
    sides["jax"] = lambda: metrics.mean_average_precision(qwj, dwj, ql, dl, bits=BITS, R=R, backend="jax")
    names["jax"] = f"ssdh_jax mean_average_precision, backend jax ({method})"
  results = {}
  for name, fn in sides.items():
    first, results[name] = warm(fn)
    notes.append(f"{task}: {names[name]} first call (compile + run) {first:.2f} s")

  # Correctness: a stable NumPy reference on 50 queries, and every side's mAP against each other.
  n_chk = min(n_q, 50)
  ap_ref = stable_numpy_ap(to_pm1(qw), to_pm1(dw), ql, dl, k, n_chk)
  ap_ours = metrics.average_precision(qwj[:n_chk], dwj, ql[:n_chk], dl, bits=BITS, R=R, backend="jax")[0]
  err_ref = float(np.abs(ap_ref - ap_ours).max())
  assert err_ref < 1e-5, err_ref
  assert abs(results.get("jax", results["auto"]) - results["auto"]) < 1e-6

  peer_sides, peer_names = {}, {}
  if faiss is not None:
    peer = FaissPeer(faiss, dw, qw)
    qlw, dlw = label_words(ql), label_words(dl)
    chunk = max(1, min(256, (1 << 22) // k))
    # The configuration changes the k-NN only, not the NumPy AP: chosen on the k-NN of one chunk of queries.
    config, desc = choose_faiss_config(peer, k, peer.q[:chunk], args.select_rounds, notes, task)
    peer_sides["faiss"] = lambda: peer.mean_ap(k, config, qlw, dlw, chunk)
    peer_names["faiss"] = f"FAISS IndexBinaryFlat, 64-bit codes, k={k}, {desc}; + NumPy AP"
    results["faiss"] = peer_sides["faiss"]()
  all_sides = {**sides, **peer_sides}
  times = harness.interleave(all_sides, args.rounds)
  for p in peer_sides:
    for s in sides:
      delta = abs(results[p] - results[s])
      assert delta < 1e-5, (p, s, delta)
      rows.append(
        {
          "task": task,
          "ssdh": names[s],
          "ssdh_s": median(times[s]),
          "peer": peer_names[p],
          "peer_s": median(times[p]),
          "ratio": harness.ratio_summary(times, p, s),
          "equal": f"mAP {results[s]:.6f} vs {results[p]:.6f} (|Δ| {delta:.0e}); AP vs stable NumPy "
          f"reference, {n_chk} queries: max |Δ| {err_ref:.0e}",
        }
      )

  if args.numpy:
    n_np = min(n_q, 20 if args.quick else 50)
    qb, rb = to_pm1(qw[:n_np]), to_pm1(dw)
    qsub = qwj[:n_np]
    ours = lambda: metrics.mean_average_precision(qsub, dwj, ql[:n_np], dl, bits=BITS, R=R)
    warm(ours)
    zoo = lambda: CalcTopMap(rb, qb, dl, ql[:n_np], k)
    m_zoo = zoo()
    t = harness.interleave({"auto": ours, "numpy": zoo}, args.rounds)
    rows.append(
      {
        "task": task.replace(f"{n_q:,} x", f"{n_np:,} x"),
        "ssdh": names["auto"],
        "ssdh_s": median(t["auto"]),
        "peer": "NumPy CalcTopMap (DeepHash-pytorch; unstable argsort)",
        "peer_s": median(t["numpy"]),
        "ratio": harness.ratio_summary(t, "numpy", "auto"),
        "equal": f"mAP {ours():.6f} vs {m_zoo:.6f} (ties ordered by np.argsort's quicksort)",
      }
    )


def bench_search(ctx, n_db, n_q, k=100):
  args, faiss, rng, rows, notes = ctx["args"], ctx["faiss"], ctx["rng"], ctx["rows"], ctx["notes"]
  task = f"top-{k} search, {n_db / 1e6:g}M codes, {n_q:,} queries, {BITS} bits"
  print(f"{task} ...", file=sys.stderr, flush=True)
  dw, qw = random_codes(rng, n_db), random_codes(rng, n_q)
  dwj, qwj = jnp.asarray(dw), jnp.asarray(qw)
  used = metrics.resolve_backend("auto", dwj, k, n_db)
  ours = lambda: jax.block_until_ready(index_lib.knn(dwj, qwj, k, bits=BITS))  # jax dispatches asynchronously
  first, (pos, dist) = warm(ours)
  pos, dist = np.asarray(pos), np.asarray(dist)
  name = f"ssdh_jax index.knn, backend auto → {used}"
  notes.append(f"{task}: {name} first call (compile + run) {first:.2f} s")
  if faiss is not None:
    peer = FaissPeer(faiss, dw, qw)
    config, desc = choose_faiss_config(peer, k, peer.q[:200], args.select_rounds, notes, task)
    f_dist, f_pos = peer.search(k, config)
    same = f"distances equal: {np.array_equal(f_dist, dist)}, ids equal: {np.array_equal(f_pos, pos)}"
    times = harness.interleave({"ssdh": ours, "faiss": lambda: peer.search(k, config)}, args.rounds)
    rows.append(
      {
        "task": task,
        "ssdh": name,
        "ssdh_s": median(times["ssdh"]),
        "peer": f"FAISS IndexBinaryFlat, 64-bit codes, {desc}",
        "peer_s": median(times["faiss"]),
        "ratio": harness.ratio_summary(times, "faiss", "ssdh"),
        "equal": same,
      }
    )
  if args.numpy:
    n_np = min(n_q, 10 if args.quick else 20)
    rb, qb = to_pm1(dw), to_pm1(qw[:n_np])
    sub = lambda: jax.block_until_ready(index_lib.knn(dwj, qwj[:n_np], k, bits=BITS))
    warm(sub)
    nn = numpy_search(qb, rb, k)
    d_np = CalcHammingDist(qb, rb)[np.arange(n_np)[:, None], nn]
    t = harness.interleave({"ssdh": sub, "numpy": lambda: numpy_search(qb, rb, k)}, args.rounds)
    rows.append(
      {
        "task": task.replace(f"{n_q:,} queries", f"{n_np:,} queries"),
        "ssdh": name,
        "ssdh_s": median(t["ssdh"]),
        "peer": "NumPy ±1 dot + argsort per query",
        "peer_s": median(t["numpy"]),
        "ratio": harness.ratio_summary(t, "numpy", "ssdh"),
        "equal": f"distances equal: {np.array_equal(d_np.astype(np.int32), dist[:n_np])}",
      }
    )
    del rb


def main(args) -> None:
  faiss = faiss_module()
  if faiss is not None:
    faiss.omp_set_num_threads(args.threads)
  ctx = {"args": args, "faiss": faiss, "rng": np.random.default_rng(args.seed), "rows": [], "notes": []}
  header = harness.machine_header(args.threads)
  t0 = time.perf_counter()
  bench_map(ctx, 210 if args.quick else 2100, 193_734, 5000)
  bench_map(ctx, 200 if args.quick else 1000, 54_000, 0, single_label=True)
  bench_search(ctx, 1_000_000, 100 if args.quick else 1000)
  if not args.quick:
    bench_search(ctx, 10_000_000, 100)
  cpu = harness.cpu_model()
  ctx["notes"].append(harness.rounds_note(args.rounds, t0))
  res = {
    "threads": args.threads,
    "header": f"{header}; process bound to cores {CORES}",
    "versions": f"CPU: {cpu}; jax {jax.__version__}, numpy {np.__version__}, "
    f"faiss {getattr(faiss, '__version__', 'not installed')}; times are medians over the rounds (context only: "
    "the machine is shared), the ratio is the measurement",
    "rows": ctx["rows"],
    "notes": ctx["notes"],
  }
  if args.json:
    print(JSON_TAG + json.dumps(res), flush=True)
  else:
    _print_tables([res], sys.argv)


if __name__ == "__main__":
  main(ARGS)
