"""Input pipeline on CIFAR-10: ssdh_jax's host pipeline against tf.data at its best, paired and interleaved.

Reads the shared archive (../shared/data/cifar10-jpeg.tar.xz; --quick unpacks 6,000 of its 60,000 files) into a
temporary folder once, then runs the whole comparison in one child process per thread count (1, then 2; or
--threads N), each bound to its cores by `harness.pin_threads` before numpy / TensorFlow / JAX are imported.

Paired rows (the measurement): uint8 (128, S, S, 3) training batches, random rows per batch, built by
  * ours: `pipeline.train_batch` for consecutive steps, with `data.num_workers = threads` and the thread pool
    and permutation cache that `train_batches` passes it (the body of its producer thread; that thread only
    overlaps batch building with the consumer, and the bench has no consumer work);
  * tf.data (the input pipeline JAX users use, e.g. big_vision), the same transform: rows drawn from a seeded
    stream (`Dataset.random`, re-randomised per iterator; stateless uniforms per row), the in-memory array as a
    tensor or the JPEG files via `tf.io.read_file` + `tf.io.decode_jpeg` (dct_method INTEGER_ACCURATE: the same
    pixels as PIL; tf's default INTEGER_FAST differs by up to 4 and is timed apart, in the notes), tf.pad /
    tf.image.resize (bilinear) and the crop and flip. Threads: `tf.config.threading` intra/inter-op = threads,
    and per dataset `threading.private_threadpool_size = threads`, `autotune.cpu_budget = threads`,
    deterministic=False, prefetch(AUTOTUNE). At its best: the configurations in `TF_CONFIGS` (per-example map
    then batch, with AUTOTUNE or num_parallel_calls = threads; or batch first, then one vectorised map whose
    crops and flips are two batched gathers, with intra-op parallelism = threads or 1) are each timed for
    --select-rounds interleaved rounds and the fastest is kept for the row (the table names it, the notes give
    every configuration's rate).
Rows: in memory at 32 px (pad 4 -> random 32 crop -> random h-flip) and at 224 px (resize 256 -> random 224 crop
-> flip); from JPEG files at 32 px (decode + pad/crop/flip) and at 224 px (decode + resize/crop/flip).

Fair interleaving with a prefetching pipeline: nothing may run in the background while the other side is timed.
One timed unit of either side is n batches. tf.data's unit creates a fresh iterator over a dataset whose seed
stream is cut to exactly n batches (`take` upstream of every map, so no map or prefetch computes anything past
them) and consumes it to its end-of-sequence, so its threads are idle when the unit ends; the iterator is then
dropped. tf.data starts those threads at the first request, not at the iterator's creation (checked per row
with a counter in the winning pipeline's first map: an iterator left idle for a unit's length computes no
element, and one consumed to its end computes exactly its n batches' elements, even after an idle wait), so
creation does no work ahead either. The main ratio times tf.data from its first request to the
end-of-sequence (a training run creates its iterator once; the start of its threads and the filling of the
pipeline at the first request stay counted); the next column counts the creation too (tens of ms per
iterator on a loaded machine, in the notes). Ours calls `train_batch` n times on the calling
thread and its pool, which is idle between calls. Each round times both sides once, in alternating order
(harness.interleave), --rounds rounds (default 8; --quick 3). Reported: t_tfdata / t_ours per round, median
(IQR; min–max), n: > 1 means ours is faster. Images/s of each side are context only (the machine is shared).

Equivalence (per row): the batch shapes and dtypes are equal, and each tf.data transform (per-example and
vectorised), given the rows and crop/flip uniforms of one of our batches, reproduces that batch: identical
pixels at 32 px (in memory, and from JPEG files); at 224 px PIL's bilinear resize rounds to uint8 after each of
its two separable passes while tf.image.resize (bilinear, half-pixel centres; antialias is moot when
upsampling) rounds once, so pixels differ by at most 1.

Context rows (absolute, not paired): the one-time decode of the JPEG files into one uint8 array; the
on-device path (host part: gather uint8 rows; end to end: + host->device copy + `device_augment` under jit on
the default JAX backend). And the input work of one process of a P-process run (`train_batch(..., rows=...)`,
its 1/P share of every global batch) against the whole global batch: time ratio, paired within this process.

  .venv/bin/python -m bench.bench_input --quick     # 6,000 images, 3 rounds: ~4.5 minutes on 2 busy cores
  .venv/bin/python -m bench.bench_input             # 60,000 images, 8 rounds, 1 and 2 threads
  .venv/bin/python -m bench.bench_input --threads 2 # one thread count only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from bench import harness

ARCHIVE = os.path.join(harness.ROOT, "..", "shared", "data", "cifar10-jpeg.tar.xz")
JSON_TAG = "BENCH_INPUT_JSON "
BATCH = 128

_ARGS = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
_ARGS.add_argument("--quick", action="store_true", help="6,000 images, fewer batches, 3 rounds")
_ARGS.add_argument("--threads", type=int, default=0, help="threads per side (default: 1, then 2)")
_ARGS.add_argument("--rounds", type=int, default=0, help="paired rounds (default 8; --quick: 3)")
_ARGS.add_argument("--select-rounds", type=int, default=2, help="rounds choosing tf.data's configuration")
_ARGS.add_argument("--archive", default=ARCHIVE)
_ARGS.add_argument("--data-dir", default="", help="(internal) the unpacked archive")
_ARGS.add_argument("--json", action="store_true", help="(internal) print the results as JSON")


def _unpack(archive: str, dest: str, quick: bool) -> float:
  """Unpacks the archive (--quick: 300 files per split and class) into dest; returns the seconds taken."""
  t = time.perf_counter()
  members = ["--wildcards", "*/*/0[0-2]??.jpg"] if quick else []  # creating 60,000 files dominates the untar
  subprocess.run(["tar", "xJf", os.path.abspath(archive), "-C", dest, *members], check=True)
  return time.perf_counter() - t


def _child_argv(args, threads: int, data_dir: str) -> list[str]:
  argv = harness.module_argv("bench.bench_input", "--threads", str(threads), "--json", "--data-dir", data_dir)
  argv += ["--quick"] * args.quick
  return [*argv, "--rounds", str(args.rounds), "--select-rounds", str(args.select_rounds)]


def _print_tables(results: list[dict], argv: list[str], untar_s: float | None) -> None:
  print(f"Command: `{' '.join(['python -m bench.bench_input', *argv[1:]])}`  ")
  first = results[0]
  print(
    f"CIFAR-10, {first['n_images']:,} images (uint8 32x32 in memory / JPEG files), batch {BATCH}; "
    + (f"untar of the archive {untar_s:.1f} s; " if untar_s is not None else "")
    + f"JAX backend: {first['backend']}"
  )
  for res in results:
    print(f"\n**{res['threads']} thread(s) per side** — {res['header']}  ")
    print(f"{res['versions']}\n")
    columns = ("task", "output", "ours images/s (context)",
               "tf.data config (fastest of the tried)", "tf.data images/s (context)",
               "t_tfdata / t_ours median (IQR; min–max), n",
               "the same, tf.data iterator creation counted", "same output?")  # fmt: skip
    print(*harness.md_head(columns), sep="\n")
    for r in res["rows"]:
      print(
        f"| {r['task']} | {r['size']}x{r['size']} | {r['ours_ips']:,.0f} | {r['peer']} | {r['peer_ips']:,.0f} "
        f"| {r['ratio']} | {r['ratio_total']} | {r['equal']} |"
      )
    print("\nContext (absolute, not paired):\n")
    columns = ("path", "output", "images/s", "notes")
    print(*harness.md_head(columns), sep="\n")
    for name, size, rate, note in res["context"]:
      print(f"| {name} | {size}x{size} | {rate:,.0f} | {note} |")
    print(
      f"\nInput work per process on a P-process run (global batch {BATCH}, {res['share_reps']} paired repeats): "
      "each process materialises only its rows of every global batch. Ratio = time of one process's share / "
      "time of the whole batch, both built in this process, alternating; ideal 1/P.\n"
    )
    columns = ("path", "output", "P", "ratio, median (min–max)", "ideal")
    print(*harness.md_head(columns), sep="\n")
    for name, size, p, med, lo, hi in res["shares"]:
      print(f"| {name} | {size}x{size} | {p} | {med:.3f} ({lo:.3f}–{hi:.3f}) | {1 / p:.3f} |")
    if res["notes"]:
      print()
      for note in res["notes"]:
        print(f"- {note}")
  last = results[-1]
  ours = {(r["task"], r["size"]): r["ours_ips"] for r in last["rows"]}
  ctx = {(n, s): v for n, s, v, _ in last["context"]}
  print(
    f"\nWhich path a GPU run should use ({last['threads']} thread(s)): for in-memory data sets (CIFAR-10, "
    "digits) set data.on_device_augment=True. The host then only gathers uint8 rows "
    f"({ctx[('on-device path: host part (gather uint8)', 224)]:,.0f} images/s here) and the accelerator does "
    "resize/crop/flip, while the host path tops out at "
    f"{ours[('in memory', 224)]:,.0f} images/s at 224x224 on this CPU, which would cap a GPU run's training "
    f"rate at that, and at {ours[('in memory', 32)]:,.0f} images/s at 32x32. The end-to-end on-device rows ran "
    f"on the {last['backend']} backend. Data sets that do not fit in memory (NUS-WIDE, COCO, ImageNet-100) use "
    "the host path from files: JPEG decoding bounds it, so give data.num_workers every core."
  )


def _parent(args) -> None:
  with tempfile.TemporaryDirectory(prefix="ssdh_bench_input_") as tmp:
    untar_s = _unpack(args.archive, tmp, args.quick)
    results = harness.run_thread_counts(lambda threads: _child_argv(args, threads, tmp), JSON_TAG)
  _print_tables(results, sys.argv, untar_s)


if __name__ == "__main__":
  ARGS = _ARGS.parse_args()
  if ARGS.rounds <= 0:
    ARGS.rounds = 3 if ARGS.quick else 8
  if ARGS.threads <= 0:
    _parent(ARGS)
    raise SystemExit(0)
  CORES = harness.pin_threads(ARGS.threads)  # before numpy / TensorFlow / JAX are imported
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import concurrent.futures  # noqa: E402
import functools  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

if __name__ == "__main__":  # before TensorFlow's runtime starts
  tf.config.threading.set_intra_op_parallelism_threads(ARGS.threads)
  tf.config.threading.set_inter_op_parallelism_threads(ARGS.threads)
  tf.config.set_visible_devices([], "GPU")  # JAX keeps the accelerator

import jax  # noqa: E402

from configs import default  # noqa: E402
from ssdh_jax.data import pipeline, sources  # noqa: E402

AUTOTUNE = tf.data.AUTOTUNE

# tf.data configurations tried per row: (name, structure, num_parallel_calls (0: AUTOTUNE), intra-op threads
# (0: the thread count)). "example": per-example map, then batch (tf.data fuses the two); "batch": batch the
# seeds (in memory) or the decoded images (files) first, then one vectorised map over the whole batch.
TF_CONFIGS = (
  ("per-example map (AUTOTUNE) → batch", "example", 0, 1),
  ("per-example map (num_parallel_calls=T) → batch", "example", -1, 1),
  ("batch → vectorised map (AUTOTUNE, intra-op T)", "batch", 0, 0),
  ("batch → vectorised map (num_parallel_calls=T, intra-op 1)", "batch", -1, 1),
)


def _config(image_size, resize, augment, workers, on_device=False, batch=BATCH):
  c = default.get_config()
  with c.unlocked():  # num_workers is optional (read with .get) and may be absent from default.py
    c.train.batch_size = batch
    c.data.image_size = image_size
    c.data.resize_size = resize
    c.data.augment = augment
    c.data.pad = 4
    c.data.num_workers = workers
    c.data.on_device_augment = on_device
    c.data.labeled_fraction = 0.5
  return c


def _rate(fn, n_items, repeats):
  fn()  # warm-up (jit compile, thread pools, page cache)
  t = time.perf_counter()
  for _ in range(repeats):
    fn()
  return n_items * repeats / (time.perf_counter() - t)


def _splits(ex):
  n = len(ex)
  rows = np.random.default_rng(0).permutation(n)
  lab, unl = np.sort(rows[: n // 12]), np.sort(rows[n // 12 :])
  return {"train_labeled": ex.subset(lab), "train_unlabeled": ex.subset(unl)}


def _share_ratios(s, c, parts, reps, first_step, executor):
  """{P: ratios} of t(one process's 1/P share of a global batch) / t(the whole batch); full and shares
  alternate within each repeat, on the same step's batch."""
  bsz = int(c.train.batch_size)
  ratios = {p: [] for p in parts}
  pipeline.train_batch(s, c, 0, first_step, executor=executor)  # warm-up
  for r in range(reps):
    step = first_step + 1 + r
    t = time.perf_counter()
    pipeline.train_batch(s, c, 0, step, executor=executor)
    full = time.perf_counter() - t
    for p in parts:
      t = time.perf_counter()
      pipeline.train_batch(s, c, 0, step, executor=executor, rows=(0, bsz // p))
      ratios[p].append((time.perf_counter() - t) / full)
  return ratios


def _median(xs):
  return float(np.median(np.asarray(xs)))


# ------------------------------------------------------------------------------------------- the tf.data peer


def _offsets(u, extent, size):
  """`pipeline._crop_offsets` in TensorFlow: min(floor(u * (extent - size + 1)), extent - size), int32."""
  extent = tf.cast(extent, tf.float64)
  off = tf.minimum(tf.floor(u * (extent - size + 1)), extent - size)
  return tf.cast(off, tf.int32)


class TfTransform:
  """The training transform in TensorFlow, from the same 3 uniforms per row as ours (crop y, crop x, flip):
  resize (bilinear) when resize > 0, zero-pad when pad > 0, crop, flip when u[2] < 0.5, and (after a resize)
  round to uint8 — after the crop, so that only the kept pixels are rounded (the same result)."""

  def __init__(self, size: int, resize: int, pad: int):
    self.size, self.resize, self.pad = size, resize, pad

  def _resize_pad(self, x):
    if self.resize:  # float32 from here on
      x = tf.image.resize(x, (self.resize, self.resize), method="bilinear", antialias=False)
    if self.pad:
      p = self.pad
      x = tf.pad(x, [[0, 0]] * (x.shape.rank - 3) + [[p, p], [p, p], [0, 0]])
    return x

  def _to_uint8(self, x):
    if x.dtype == tf.uint8:
      return x
    return tf.cast(tf.clip_by_value(tf.floor(x + 0.5), 0.0, 255.0), tf.uint8)  # round half up, as PIL

  def one(self, img, u):
    """uint8 (H,W,3), float64 (3,) -> uint8 (S,S,3): slices."""
    s = self.size
    x = self._resize_pad(img)
    shape = tf.shape(x)
    y0, x0 = _offsets(u[0], shape[0], s), _offsets(u[1], shape[1], s)
    crop = x[y0 : y0 + s, x0 : x0 + s]
    out = self._to_uint8(tf.cond(u[2] < 0.5, lambda: tf.reverse(crop, [1]), lambda: crop))
    out.set_shape((s, s, 3))
    return out

  def batch(self, imgs, u):
    """uint8 (B,H,W,3) (static H, W), float64 (B,3) -> uint8 (B,S,S,3): crop and flip as two batched gathers."""
    s = self.size
    x = self._resize_pad(imgs)
    h, w = x.shape[1], x.shape[2]
    r = tf.range(s, dtype=tf.int32)
    rows = _offsets(u[:, 0], h, s)[:, None] + r
    xs = _offsets(u[:, 1], w, s)[:, None]
    cols = tf.where(u[:, 2:3] < 0.5, xs + (s - 1) - r, xs + r)
    return self._to_uint8(tf.gather(tf.gather(x, rows, axis=1, batch_dims=1), cols, axis=2, batch_dims=1))


class TfPeer:
  """tf.data pipelines for one row: a random-row sampler over `source` (a uint8 array, or a list of JPEG paths)
  and `TfTransform`; `dataset(config, n)` gives n batches."""

  def __init__(self, source, transform: TfTransform, threads: int, seed: int):
    self.files = not isinstance(source, np.ndarray)
    self.n = len(source)
    self.data = tf.constant(source)  # (N,H,W,3) uint8, or (N,) paths
    self.shape = (32, 32) if self.files else tuple(source.shape[1:3])  # CIFAR files are all 32x32
    self.t, self.threads, self.seed = transform, threads, seed

  def _draw(self, seed, shape):
    """(row, uniforms) from one stream seed: row uniform in [0, N), 3 float64 uniforms per row."""
    u = tf.random.stateless_uniform((*shape, 4), tf.stack([seed, tf.constant(0, tf.int64)]), dtype=tf.float64)
    row = tf.minimum(tf.cast(tf.floor(u[..., 0] * self.n), tf.int32), self.n - 1)
    return row, u[..., 1:]

  def image(self, row, dct="INTEGER_ACCURATE"):
    """Pool row -> uint8 (H,W,3). JPEG: dct_method INTEGER_ACCURATE decodes exactly as PIL (libjpeg's ISLOW);
    tf's default ('') is INTEGER_FAST."""
    if not self.files:
      return tf.gather(self.data, row)
    img = tf.io.decode_jpeg(tf.io.read_file(tf.gather(self.data, row)), channels=3, dct_method=dct)
    img.set_shape((*self.shape, 3))
    return img

  def dataset(self, config, n_batches: int, dct: str = "INTEGER_ACCURATE", counter=None):
    """n batches in `config`; `counter` (a tf.Variable): incremented per element of the first map (a check)."""
    _, kind, par, intra = config

    def count(x):
      if counter is None:
        return x
      with tf.control_dependencies([counter.assign_add(1)]):
        return tf.nest.map_structure(tf.identity, x)

    par = AUTOTUNE if par == 0 else self.threads
    seeds = tf.data.Dataset.random(seed=self.seed, rerandomize_each_iteration=True)

    def example(s):
      row, u = self._draw(s, ())
      return count(self.t.one(self.image(row, dct), u))

    def batch_mem(s):
      rows, u = self._draw(s, (BATCH,))
      return count(self.t.batch(tf.gather(self.data, rows), u))

    def decode(s):
      row, u = self._draw(s, ())
      return count((self.image(row, dct), u))

    if kind == "example":
      ds = seeds.take(n_batches * BATCH).map(example, num_parallel_calls=par, deterministic=False)
      ds = ds.batch(BATCH, drop_remainder=True)
    elif not self.files:
      ds = seeds.take(n_batches).map(batch_mem, num_parallel_calls=par, deterministic=False)
    else:  # decode per example (not vectorisable), then augment the batch
      ds = seeds.take(n_batches * BATCH).map(decode, num_parallel_calls=par, deterministic=False)
      ds = ds.batch(BATCH, drop_remainder=True).map(self.t.batch, num_parallel_calls=par, deterministic=False)
    ds = ds.prefetch(AUTOTUNE)
    opts = tf.data.Options()
    opts.deterministic = False
    opts.threading.private_threadpool_size = self.threads
    opts.threading.max_intra_op_parallelism = intra or self.threads
    opts.autotune.cpu_budget = self.threads
    return ds.with_options(opts)


class TfUnit:
  """One timed unit of tf.data: a fresh iterator over n batches, consumed to its end-of-sequence. Records the
  iterator's creation and its consumption (first request to end-of-sequence) apart."""

  def __init__(self, ds, n_batches: int):
    self.ds, self.n = ds, n_batches
    self.created: list[float] = []
    self.consumed: list[float] = []

  def __call__(self, wait: float = 0.0):
    t = time.perf_counter()
    it = self.ds.as_numpy_iterator()
    self.created.append(time.perf_counter() - t)
    if wait:  # (the laziness check) idle between creation and the first request
      time.sleep(wait)
    t = time.perf_counter()
    k, last = 0, None
    for batch in it:
      k, last = k + 1, batch
    self.consumed.append(time.perf_counter() - t)
    assert k == self.n, (k, self.n)
    return last


# ---------------------------------------------------------------------------------------------- one row


def our_params(batch, step, pool_row):
  """The pool rows and crop/flip uniforms `train_batch(..., seed=0, step)` used for `batch` (its draw order)."""
  rng = np.random.default_rng([pipeline._seed(0), 2, int(step)])
  rng.permutation(BATCH)
  u = rng.random((BATCH, 3))
  return np.asarray([pool_row[i] for i in batch["id"]], np.int64), u


def equivalence(peer: TfPeer, ours_batch, step, pool_row, source):
  """Each tf.data transform on our batch's rows and uniforms, against our batch."""
  rows, u = our_params(ours_batch, step, pool_row)
  want = ours_batch["image"]
  imgs = [peer.image(tf.constant(int(r))) for r in rows]
  one = np.stack([peer.t.one(im, tf.constant(uu)).numpy() for im, uu in zip(imgs, u)])
  vec = peer.t.batch(tf.stack(imgs), tf.constant(u)).numpy()
  out = []
  for name, got in (("per-example", one), ("vectorised", vec)):
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, got.dtype, want.shape)
    d = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert d.max() <= (1 if peer.t.resize else 0), (name, d.max())  # resize: PIL rounds twice, tf once
    if not d.any():
      out.append(f"{name}: identical")
    else:
      out.append(
        f"{name}: max |Δ| {d.max()}, {100 * np.mean(d == 0):.1f}% of values equal, batch means "
        f"{got.mean():.2f} vs {want.mean():.2f}"
      )
  if not isinstance(source, np.ndarray):  # the decoders themselves, before any transform
    dec = np.stack([im.numpy() for im in imgs[:16]])
    ref = np.stack([sources.decode_image(source[r]) for r in rows[:16]])
    out.append("JPEG decode tf == PIL: " + str(np.array_equal(dec, ref)))
  return "; ".join(out)


def bench_row(ctx, task, splits, source, pool_row, cfg, n_batches, seed):
  args, threads, executor = ctx["args"], ctx["threads"], ctx["executor"]
  d = cfg.data
  size = int(d.image_size)
  what = f"{task} {size}x{size}"
  print(f"{what} ...", file=sys.stderr, flush=True)
  transform = TfTransform(size, int(d.resize_size), int(d.pad) if d.augment == "pad_crop_flip" else 0)
  peer = TfPeer(source, transform, threads, seed)
  steps = iter(range(seed * 10**6, 10**9))
  cache: dict = {}

  def ours():
    for _ in range(n_batches):
      b = pipeline.train_batch(splits, cfg, 0, next(steps), executor=executor, cache=cache)
    return b

  step = next(steps)
  b = pipeline.train_batch(splits, cfg, 0, step, executor=executor, cache=cache)
  equal = equivalence(peer, b, step, pool_row, source)

  units = {c[0]: TfUnit(peer.dataset(c, n_batches), n_batches) for c in TF_CONFIGS}
  for unit in units.values():
    out = unit()  # warm-up: the first iterator instantiates the functions
    assert out.shape == b["image"].shape and out.dtype == b["image"].dtype, (out.shape, out.dtype)
    unit.consumed.clear()
  ours()
  harness.interleave(units, args.select_rounds)
  best = min(units, key=lambda k: _median(units[k].consumed))
  n_img = n_batches * BATCH
  ctx["notes"].append(
    f"{what}: tf.data configurations, {args.select_rounds} interleaved rounds of {n_batches} batches "
    "(iterator creation excluded): "
    + ", ".join(f"{k} {n_img / _median(u.consumed):,.0f} images/s" for k, u in units.items())
  )
  unit = units[best]
  if not isinstance(source, np.ndarray):  # tf's default JPEG decode, for context (not the same pixels)
    conf = next(c for c in TF_CONFIGS if c[0] == best)
    fast = TfUnit(peer.dataset(conf, n_batches, dct=""), n_batches)
    fast()
    unit.consumed.clear()
    harness.interleave({"accurate": unit, "fast": fast}, args.select_rounds + 1)
    r = harness.ratio_summary({"a": unit.consumed, "f": fast.consumed}, "f", "a")
    ctx["notes"].append(
      f"{what}: tf.decode_jpeg's default DCT (dct_method='', i.e. INTEGER_FAST; pixels differ from PIL's by up to "
      f"4) in the winning configuration, time / with INTEGER_ACCURATE (the same pixels as PIL): {r}"
    )

  # Laziness: the winning pipeline with a counter of the elements its first map has computed. An iterator left
  # idle after its creation computes nothing; one consumed to the end computes exactly its n batches.
  counter = tf.Variable(0, dtype=tf.int64)
  conf = next(c for c in TF_CONFIGS if c[0] == best)
  counted = peer.dataset(conf, n_batches, counter=counter)
  wait = _median(unit.created) + _median(unit.consumed)  # as long as a unit
  it = counted.as_numpy_iterator()
  time.sleep(wait)
  idle = int(counter.numpy())
  sum(1 for _ in it)
  time.sleep(wait)
  done, per = int(counter.numpy()), n_batches * (BATCH if conf[1] == "example" or peer.files else 1)
  del it
  assert idle == 0 and done == per, (idle, done, per)

  unit.created.clear()
  unit.consumed.clear()
  times = harness.interleave({"ours": ours, "tfdata_total": unit}, args.rounds)
  times["tfdata"] = list(unit.consumed)
  ctx["notes"].append(
    f"{what}: creating a tf.data iterator takes {1e3 * _median(unit.created):.1f} ms "
    f"({100 * _median(unit.created) / _median(times['tfdata_total']):.0f}% of a unit of {n_batches} batches); "
    f"elements computed by an iterator left idle {1e3 * wait:.0f} ms after its creation: {idle}; after it was "
    f"consumed and then idle as long: {done} (= the {per} its {n_batches} batches need)"
  )
  ctx["rows"].append(
    {
      "task": task,
      "size": size,
      "ours_ips": n_img / _median(times["ours"]),
      "peer": f"{best}; {n_batches} batches per unit",
      "peer_ips": n_img / _median(times["tfdata"]),
      "ratio": harness.ratio_summary(times, "tfdata", "ours"),
      "ratio_total": harness.ratio_summary(times, "tfdata_total", "ours"),
      "equal": f"shapes/dtypes equal; {equal}",
    }
  )


# ---------------------------------------------------------------------------------------------- child


def main(args) -> None:
  threads = args.threads
  header = harness.machine_header(threads)
  t0 = time.perf_counter()
  tmp = None
  data_dir = args.data_dir
  if not data_dir:
    tmp = tempfile.TemporaryDirectory(prefix="ssdh_bench_input_")
    data_dir = tmp.name
    _unpack(args.archive, data_dir, args.quick)
  n_decode = 6000 if args.quick else 60000
  b32, b224 = (8, 2) if args.quick else (24, 4)  # batches per timed unit

  relpaths, labels, _, _ = sources.scan_image_folder(data_dir)
  pick = np.sort(np.random.default_rng(0).permutation(len(relpaths))[:n_decode])
  paths = [os.path.join(data_dir, relpaths[i]) for i in pick]
  context = []
  t = time.perf_counter()
  images, bad = sources.decode_images(paths, None, threads)
  context.append(
    ("decode JPEG -> uint8 array (once)", 32, len(paths) / (time.perf_counter() - t), f"{len(paths)} files")
  )
  assert not bad and images.shape == (len(paths), 32, 32, 3)

  mem = sources.Examples(images, labels[pick], pick.astype(np.int64))
  files = sources.Examples(paths, labels[pick], pick.astype(np.int64))
  sm, sf = _splits(mem), _splits(files)
  pool_row = {int(i): k for k, i in enumerate(pick)}  # id -> row of `images` / `paths`
  executor = concurrent.futures.ThreadPoolExecutor(threads)
  ctx = {"args": args, "threads": threads, "executor": executor, "rows": [], "notes": []}

  c32 = _config(32, 0, "pad_crop_flip", threads)
  c224 = _config(224, 256, "crop_flip", threads)
  bench_row(ctx, "in memory", sm, images, pool_row, c32, b32, 1)
  bench_row(ctx, "in memory", sm, images, pool_row, c224, b224, 2)
  bench_row(ctx, "JPEG files", sf, paths, pool_row, c32, b32, 3)
  bench_row(ctx, "JPEG files", sf, paths, pool_row, c224, b224, 4)

  steps = iter(range(10**8, 10**9))

  def host(s, c):
    return lambda: pipeline.train_batch(s, c, 0, next(steps), executor=executor)

  backend = jax.default_backend()
  for size, resize, aug, reps in ((32, 0, "pad_crop_flip", 10 * b32), (224, 256, "crop_flip", 4 * b224)):
    c = _config(size, resize, aug, threads, on_device=True)
    context.append(
      ("on-device path: host part (gather uint8)", size, _rate(host(sm, c), BATCH, reps), "no augmentation")
    )
    fn = jax.jit(functools.partial(pipeline.device_augment, config=c))
    keys = iter(jax.random.split(jax.random.PRNGKey(0), 10**4))

    def dev(c=c, fn=fn, keys=keys):
      b = pipeline.train_batch(sm, c, 0, next(steps))
      fn(next(keys), jax.device_put(b["image"])).block_until_ready()

    context.append(
      (f"on-device path, end to end ({backend})", size, _rate(dev, BATCH, reps), "gather + copy + jit aug")
    )

  share_reps = 6 if args.quick else 16
  shares = []
  for name, src, cfg in (("host, in memory", sm, c224), ("host, JPEG files", sf, c32)):
    ratios = _share_ratios(src, cfg, (2, 4, 8), share_reps, 10**6, executor)
    shares.extend((name, int(cfg.data.image_size), p, _median(v), min(v), max(v)) for p, v in ratios.items())
  executor.shutdown()
  if tmp is not None:
    tmp.cleanup()

  cpu = harness.cpu_model()
  ctx["notes"].append(harness.rounds_note(args.rounds, t0))
  res = {
    "threads": threads,
    "n_images": len(paths),
    "backend": backend,
    "header": f"{header}; process bound to cores {CORES}",
    "versions": f"CPU: {cpu}; tensorflow {tf.__version__}, jax {jax.__version__}, numpy {np.__version__}; "
    "images/s are medians over the rounds (context only: the machine is shared), the ratio is the measurement",
    "rows": ctx["rows"],
    "context": context,
    "share_reps": share_reps,
    "shares": shares,
    "notes": ctx["notes"],
  }
  if args.json:
    print(JSON_TAG + json.dumps(res), flush=True)
  else:
    _print_tables([res], sys.argv, None)


if __name__ == "__main__":
  main(ARGS)
