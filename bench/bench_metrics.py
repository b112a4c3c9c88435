"""Benchmark: retrieval evaluation and Hamming search, ssdh_jax vs the PyTorch zoos' NumPy evaluator vs FAISS.

Tasks (random codes and labels; the timings do not depend on code quality):
  * mAP@5000 at NUS-WIDE scale: 2,100 queries x 193,734 database items, 48 bits, 21 multi-hot labels.
  * mAP@all at CIFAR-10 scale (`cifar10` protocol): 1,000 queries x 54,000 items, 48 bits, 10 classes.
  * top-100 Hamming search over 1M and 10M database codes (48 bits).
Methods:
  * ssdh_jax: `metrics.mean_average_precision` / `metrics.evaluate_codes` / `index.knn` (jitted; compile
    time reported separately, timings are of a second, warm call).
  * numpy: the per-query evaluator of DeepHash-pytorch (`CalcTopMap`: +-1 codes, Hamming via a dot product,
    np.argsort, cumulative precision), reproduced verbatim; for search the same per-query dot + argsort.
  * faiss: `IndexBinaryFlat` (k-NN with k = 5000, then AP in NumPy; or k = 100 for search).
By default everything runs on ONE CPU core (the process is pinned to one core, XLA/OpenMP/BLAS set to one
thread); `--platform gpu` runs the ssdh_jax rows on the first GPU (NumPy and FAISS stay on the CPU core).

  python bench/bench_metrics.py --quick        # < 2 min: 210 mAP queries, search over 1M codes only
  python bench/bench_metrics.py                # full sizes (several minutes)
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

_ARGS = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
_ARGS.add_argument("--quick", action="store_true", help="small sizes, < 2 minutes on one CPU core")
_ARGS.add_argument("--platform", default="cpu", choices=["cpu", "gpu"], help="where the ssdh_jax rows run")
_ARGS.add_argument("--threads", type=int, default=1, help="CPU threads for every method (default 1)")
_ARGS.add_argument("--no-numpy", action="store_true", help="skip the NumPy reference rows")
_ARGS.add_argument("--no-faiss", action="store_true", help="skip the FAISS rows")
_ARGS.add_argument("--seed", type=int, default=0)


def _configure_threads(threads: int, platform_name: str) -> None:
  """Must run before jax / numpy / faiss are imported."""
  for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[var] = str(threads)
  flags = os.environ.get("XLA_FLAGS", "")
  if threads == 1:
    flags += " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
  os.environ["XLA_FLAGS"] = flags.strip()
  if platform_name == "cpu":
    os.environ["JAX_PLATFORMS"] = "cpu"
  if hasattr(os, "sched_setaffinity"):
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, set(cores[:threads]))


if __name__ == "__main__":
  ARGS = _ARGS.parse_args()
  _configure_threads(ARGS.threads, ARGS.platform)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ssdh_jax import index as index_lib  # noqa: E402
from ssdh_jax import metrics  # noqa: E402

BITS = 48


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


def stable_numpy_map(qB, rB, queryL, retrievalL, topk, n):
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


def timed(fn, *, warm=True):
  """(seconds of a warm call, result, seconds of the first call)."""
  first = None
  if warm:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn())
  return time.perf_counter() - t0, out, first


ROWS = []


def row(task, method, device, n_q, seconds, result, compile_s=None):
  ROWS.append((task, method, device, n_q, seconds, result, compile_s))
  print(f"  {task} | {method} | {seconds:.3f}s | {result}", file=sys.stderr, flush=True)


def faiss_module():
  try:
    import faiss

    return faiss
  except ImportError:
    return None


# ---------------------------------------------------------------------------------------------- tasks


def bench_map(rng, args, faiss, jdev, cpu_name, n_q, n_db, R, single_label=False):
  task = f"mAP@{R or 'all'}, {n_q:,} x {n_db:,}, {BITS} bits, {'10 classes' if single_label else '21 labels'}"
  R = R or n_db
  qw, dw = random_codes(rng, n_q), random_codes(rng, n_db)
  if single_label:
    ql, dl = (
      np.eye(10, dtype=np.float32)[rng.integers(0, 10, n_q)],
      np.eye(10, dtype=np.float32)[rng.integers(0, 10, n_db)],
    )
  else:
    ql, dl = random_labels(rng, n_q), random_labels(rng, n_db)
  qwj, dwj = jax.device_put(jnp.asarray(qw), jdev), jax.device_put(jnp.asarray(dw), jdev)

  # On an accelerator: one chunk as large as the memory bound allows; the counting scans are CPU-only.
  chunk = 256 if jdev.platform == "cpu" else 4096
  for method in ("counting", "sort") if jdev.platform == "cpu" else ("sort",):
    sec, m, first = timed(
      lambda method=method: metrics.mean_average_precision(
        qwj, dwj, ql, dl, bits=BITS, R=R, method=method, query_chunk=chunk
      )
    )
    auto = metrics._resolve_method("auto", dwj, R, n_db) == method
    row(
      task,
      f"ssdh_jax mean_average_precision ({method}{', the auto choice' if auto else ''})",
      jdev.platform,
      n_q,
      sec,
      f"mAP {m:.5f}",
      first - sec,
    )
  sec, res, first = timed(
    lambda: metrics.evaluate_codes(
      qwj, dwj, ql, dl, bits=BITS, R=R, expected_ties=True, pr_rank_max=R, query_chunk=chunk
    )
  )
  row(
    task,
    "ssdh_jax evaluate_codes (all metrics + expected ties)",
    jdev.platform,
    n_q,
    sec,
    f"mAP {res['map']:.5f}, E[mAP] {res['map_expected_ties']:.5f}",
    first - sec,
  )
  qb, rb = to_pm1(qw), to_pm1(dw)
  if not args.no_numpy:
    t0 = time.perf_counter()
    m_np = CalcTopMap(rb, qb, dl, ql, R)
    row(
      task, "numpy CalcTopMap (DeepHash-pytorch)", cpu_name, n_q, time.perf_counter() - t0, f"mAP {m_np:.5f}"
    )
  n_chk = min(n_q, 50)
  ap_ref = stable_numpy_map(qb, rb, ql, dl, R, n_chk)
  ap_ours = metrics.average_precision(qwj[:n_chk], dwj, ql[:n_chk], dl, bits=BITS, R=R)[0]
  err = float(np.abs(ap_ref - ap_ours).max())
  print(
    f"  check: max |AP ssdh_jax - AP numpy stable argsort| over {n_chk} queries = {err:.2e}", file=sys.stderr
  )
  assert err < 1e-5, err
  if faiss is not None and not args.no_faiss:
    fidx = faiss.IndexBinaryFlat(BITS)
    fidx.add(index_lib.faiss_bytes(dw, BITS))
    t0 = time.perf_counter()
    _, nn = fidx.search(index_lib.faiss_bytes(qw, BITS), R)
    ap = []
    for s in range(0, n_q, 100):  # relevance in FAISS's order, 100 queries at a time
      rel = ((ql[s : s + 100, None, :] * dl[nn[s : s + 100]]).sum(-1) > 0).astype(np.float64)
      hits = np.cumsum(rel, axis=1)
      prec_sum = (rel * hits / np.arange(1, R + 1)).sum(1)
      ap.append(np.where(hits[:, -1] > 0, prec_sum / np.maximum(hits[:, -1], 1), 0.0))
    ap = np.concatenate(ap)
    row(
      task,
      f"faiss IndexBinaryFlat k={R} + numpy AP",
      cpu_name,
      n_q,
      time.perf_counter() - t0,
      f"mAP {ap.mean():.5f}",
    )


def bench_search(rng, args, faiss, jdev, cpu_name, n_db, n_q, n_q_numpy):
  k = 100
  task = f"top-{k} search, {n_db / 1e6:g}M codes, {BITS} bits"
  dw, qw = random_codes(rng, n_db), random_codes(rng, n_q)
  dwj, qwj = jax.device_put(jnp.asarray(dw), jdev), jax.device_put(jnp.asarray(qw), jdev)
  sec, (pos, dist), first = timed(lambda: index_lib.knn(dwj, qwj, k, bits=BITS))
  pos, dist = np.asarray(pos), np.asarray(dist)
  row(task, "ssdh_jax index.knn", jdev.platform, n_q, sec, "exact, ties by index", first - sec)
  if not args.no_numpy and n_q_numpy:
    rb = to_pm1(dw)
    t0 = time.perf_counter()
    nn = numpy_search(to_pm1(qw[:n_q_numpy]), rb, k)
    sec = time.perf_counter() - t0
    d_np = CalcHammingDist(to_pm1(qw[:n_q_numpy]), rb)[np.arange(n_q_numpy)[:, None], nn]
    same = np.array_equal(d_np.astype(np.int32), dist[:n_q_numpy])
    row(task, "numpy dot + argsort per query", cpu_name, n_q_numpy, sec, f"distances equal: {same}")
    del rb
  if faiss is not None and not args.no_faiss:
    fidx = faiss.IndexBinaryFlat(BITS)
    fidx.add(index_lib.faiss_bytes(dw, BITS))
    t0 = time.perf_counter()
    f_dist, f_pos = fidx.search(index_lib.faiss_bytes(qw, BITS), k)
    sec = time.perf_counter() - t0
    same_d = np.array_equal(f_dist, dist)
    same_i = np.array_equal(f_pos, pos)
    row(task, "faiss IndexBinaryFlat", cpu_name, n_q, sec, f"distances equal: {same_d}, ids equal: {same_i}")


def main(args) -> None:
  rng = np.random.default_rng(args.seed)
  faiss = None if args.no_faiss else faiss_module()
  if faiss is not None:
    faiss.omp_set_num_threads(args.threads)
  jdev = jax.devices("gpu")[0] if args.platform == "gpu" else jax.devices("cpu")[0]
  cpu_name = f"cpu x{args.threads}"
  print(f"ssdh_jax rows on {jdev.device_kind}", file=sys.stderr)
  bench_map(rng, args, faiss, jdev, cpu_name, 210 if args.quick else 2100, 193_734, 5000)
  bench_map(rng, args, faiss, jdev, cpu_name, 200 if args.quick else 1000, 54_000, 0, single_label=True)
  if args.quick:
    bench_search(rng, args, faiss, jdev, cpu_name, 1_000_000, 100, 10)
  else:
    bench_search(rng, args, faiss, jdev, cpu_name, 1_000_000, 1000, 50)
    bench_search(rng, args, faiss, jdev, cpu_name, 10_000_000, 100, 5)

  print(f"Command: `{' '.join([os.path.basename(sys.executable), *sys.argv])}`  ")
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  print(
    f"CPU: {cpu}, {args.threads} thread(s) for every method; ssdh_jax device: {jdev.device_kind}; "
    f"jax {jax.__version__}, numpy {np.__version__}, faiss {getattr(faiss, '__version__', 'not installed')}\n"
  )
  print("| task | method | device | queries | time (s) | ms / query | compile (s) | result |")
  print("|---|---|---|---:|---:|---:|---:|---|")
  for task, method, device, n_q, sec, result, compile_s in ROWS:
    comp = f"{compile_s:.2f}" if compile_s is not None else ""
    print(f"| {task} | {method} | {device} | {n_q} | {sec:.3f} | {sec / n_q * 1e3:.2f} | {comp} | {result} |")


if __name__ == "__main__":
  main(ARGS)
