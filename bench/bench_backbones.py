"""Forward + backward throughput of each backbone inside the hashing model, at its nominal input size.

One timed step = model.apply(train=True: dropout, BatchNorm batch statistics) → a scalar of the codes and class
logits → gradients w.r.t. all params, jitted, on random weights (values do not change the arithmetic). On CPU
(always) fp32 with a small batch; when JAX sees a GPU, also fp32 and bf16 compute with a larger batch.

  .venv/bin/python -m bench.bench_backbones [--quick] [--backbones vgg_f,mobilenet_v2] [--reps N]
  .venv/bin/python -m bench.bench_backbones --depthwise-compare [--dw-batch 8] [--dw-size 160] [--dw-pairs 10]
  .venv/bin/python -m bench.bench_backbones --pointwise-compare [the same --dw-* options]

--quick keeps to small_cnn, mobilenet_v2, alexnet and vgg_f at small batches (< 2 min on 2 CPU cores), then
runs a small --depthwise-compare (batch 8, 96 px).

--depthwise-compare times the MobileNetV2 backbone's train step (forward + backward, BatchNorm batch
statistics) and inference step with depthwise='conv' (grouped convolution) against depthwise='shift' (shifted
multiply-adds, ssdh_jax/models/depthwise.py), interleaved in one process so that load drifts hit both alike,
and prints the median conv/shift time ratio with its spread over the pairs. --pointwise-compare does the same
for pointwise='conv' (1x1 convolutions) against pointwise='dot' (matmuls, ssdh_jax/models/pointwise.py).
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from bench import harness
from ssdh_jax import models
from ssdh_jax.models.mobilenet_v2 import MobileNetV2

QUICK = ("small_cnn", "mobilenet_v2", "alexnet", "vgg_f")
CPU_BATCH = {"small_cnn": 64, "mobilenet_v2": 4, "alexnet": 4, "vgg_f": 4, "vgg16": 2, "vgg19": 2}
GPU_BATCH = {"small_cnn": 512, "mobilenet_v2": 128, "alexnet": 128, "vgg_f": 128, "vgg16": 64, "vgg19": 64}


def _random_variables(shapes, seed=0):
  """Random values for an eval_shape'd variables tree, from NumPy (no XLA compile of the initialisers)."""
  rng = np.random.default_rng(seed)

  def leaf(s):
    if len(s.shape) == 1:  # biases, BN scales/variances: positive and O(1)
      return (0.5 + rng.random(s.shape, dtype=np.float32)).astype(s.dtype)
    fan_in = max(1, int(np.prod(s.shape[:-1])))
    return (rng.standard_normal(s.shape, dtype=np.float32) * np.sqrt(2.0 / fan_in)).astype(s.dtype)

  return jax.tree.map(leaf, shapes)


def bench(name: str, batch: int, dtype: str, reps: int, device) -> dict:
  size = models.DEFAULT_IMAGE_SIZE[name]
  model = models.build_model({"name": name, "bits": 48, "num_classes": 10, "dtype": dtype})
  x_shape = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init({"params": jax.random.key(0)}, x), x_shape)
  variables = jax.device_put(_random_variables(shapes), device)

  def step(variables, images, key):
    def loss_fn(params):
      out, _ = model.apply(
        {**variables, "params": params}, images, train=True, rngs={"dropout": key}, mutable=["batch_stats"]
      )
      return out["codes"].mean() + out["class_logits"].mean()

    return jax.value_and_grad(loss_fn)(variables["params"])

  images = jax.device_put(
    jnp.asarray(np.random.default_rng(1).standard_normal(x_shape.shape, np.float32)), device
  )
  key = jax.random.key(2)
  t = time.perf_counter()
  compiled = jax.jit(step).lower(variables, images, key).compile()
  compile_s = time.perf_counter() - t
  flops = None
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0)) or None
  except Exception:  # cost analysis is optional and backend-specific
    pass
  jax.block_until_ready(compiled(variables, images, key))  # warm-up
  t = time.perf_counter()
  for _ in range(reps):
    out = compiled(variables, images, key)
  jax.block_until_ready(out)
  step_s = (time.perf_counter() - t) / reps
  return {
    "backbone": name,
    "size": size,
    "dtype": dtype,
    "batch": batch,
    "compile_s": compile_s,
    "step_ms": 1e3 * step_s,
    "images_s": batch / step_s,
    "gflop_img": flops / batch / 1e9 if flops else float("nan"),
  }


LOWERINGS = {"depthwise": ("conv", "shift"), "pointwise": ("conv", "dot")}  # MobileNetV2 field: (base, ours)


def _compiled_steps(model: MobileNetV2, variables, images) -> dict:
  """Jitted, compiled MobileNetV2 backbone steps: 'train' (value and grad of a scalar of the features, batch
  statistics) and 'infer' (features with running statistics)."""

  def train(variables, images):
    def loss_fn(params):
      out, _ = model.apply({**variables, "params": params}, images, train=True, mutable=["batch_stats"])
      return out.mean()

    return jax.value_and_grad(loss_fn)(variables["params"])

  def infer(variables, images):
    return model.apply(variables, images, train=False)

  return {k: jax.jit(f).lower(variables, images).compile() for k, f in (("train", train), ("infer", infer))}


def lowering_compare(field: str, batch: int, size: int, pairs: int, device) -> list[dict]:
  """Per step kind, the base/ours time ratios of `pairs` back-to-back timings of MobileNetV2 with `field`
  (depthwise or pointwise) set to each lowering of LOWERINGS[field] (the other field at 'auto'), after warm-up;
  the order within a pair alternates so that neither impl always runs on the warmer cache."""
  base, ours = LOWERINGS[field]
  x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
  shapes = jax.eval_shape(lambda x: MobileNetV2().init({"params": jax.random.key(0)}, x), x)
  variables = jax.device_put(_random_variables(shapes), device)
  images = jax.device_put(jnp.asarray(np.random.default_rng(1).standard_normal(x.shape, np.float32)), device)
  t = time.perf_counter()
  steps = {impl: _compiled_steps(MobileNetV2(**{field: impl}), variables, images) for impl in (base, ours)}
  compile_s = time.perf_counter() - t

  def timed(fn) -> float:
    t = time.perf_counter()
    jax.block_until_ready(fn(variables, images))
    return time.perf_counter() - t

  rows = []
  for kind in ("train", "infer"):
    for impl in (base, ours):
      for _ in range(2):  # warm-up: first-call allocations, thread-pool spin-up
        timed(steps[impl][kind])
    times = {base: [], ours: []}
    for i in range(pairs):
      for impl in (base, ours) if i % 2 == 0 else (ours, base):
        times[impl].append(timed(steps[impl][kind]))
    t_base, t_ours = np.array(times[base]), np.array(times[ours])
    ratio = t_base / t_ours
    rows.append(
      {
        "kind": kind,
        "base_ms": 1e3 * np.median(t_base),
        "ours_ms": 1e3 * np.median(t_ours),
        "ratio": np.median(ratio),
        "ratio_min": ratio.min(),
        "ratio_max": ratio.max(),
        "ratio_q1": np.percentile(ratio, 25),
        "ratio_q3": np.percentile(ratio, 75),
      }
    )
  rows[0]["compile_s"] = compile_s
  return rows


def print_lowering_compare(field: str, batch: int, size: int, pairs: int) -> None:
  cpu = jax.devices("cpu")[0]
  loads = ", ".join(f"{v:.2f}" for v in os.getloadavg())
  affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  xla_flags = os.environ.get("XLA_FLAGS", "")
  base, ours = LOWERINGS[field]
  what = {"depthwise": "grouped conv vs shifted multiply-adds", "pointwise": "1x1 conv vs matmul"}[field]
  print(
    f"\n## MobileNetV2 {field} lowering: {base} vs {ours} ({what}), backbone only, fp32, JAX {jax.__version__}\n"
  )
  print(
    f"CPU: os.cpu_count()={os.cpu_count()}, usable cores={affinity} (XLA:CPU uses them all), load average "
    f"(1/5/15 min) at start: {loads}; XLA_FLAGS={xla_flags!r}; batch {batch}, {size}x{size}, "
    f"{pairs} interleaved pairs after 2 warm-up calls each."
  )
  rows = lowering_compare(field, batch, size, pairs, cpu)
  print(f"compile (4 steps): {rows[0]['compile_s']:.1f} s; load average at end: {os.getloadavg()[0]:.2f}\n")
  columns = (
    "step",
    f"{base} ms (median)",
    f"{ours} ms (median)",
    f"{base}/{ours} (median of pairs)",
    "min–max",
    "IQR",
  )
  print(*harness.md_head(columns), sep="\n")
  for r in rows:
    print(
      f"| {r['kind']} | {r['base_ms']:.1f} | {r['ours_ms']:.1f} | {r['ratio']:.2f}x | "
      f"{r['ratio_min']:.2f}–{r['ratio_max']:.2f} | {r['ratio_q1']:.2f}–{r['ratio_q3']:.2f} |"
    )


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="small backbones and batches (< 2 min on 2 CPU cores)")
  ap.add_argument("--backbones", default="", help="comma-separated subset (default: all, or the quick set)")
  ap.add_argument("--reps", type=int, default=0, help="timed steps per row (default 3 quick, 10 full)")
  ap.add_argument(
    "--depthwise-compare", action="store_true", help="only the MobileNetV2 depthwise conv-vs-shift comparison"
  )
  ap.add_argument(
    "--pointwise-compare", action="store_true", help="only the MobileNetV2 1x1 conv-vs-matmul comparison"
  )
  ap.add_argument("--dw-batch", type=int, default=8, help="depthwise comparison batch")
  ap.add_argument(
    "--dw-size", type=int, default=0, help="depthwise comparison input size (default 96 quick, 160)"
  )
  ap.add_argument(
    "--dw-pairs", type=int, default=0, help="depthwise comparison: timed pairs (default 8 quick, 10)"
  )
  args = ap.parse_args()
  dw_size, dw_pairs = args.dw_size or (96 if args.quick else 160), args.dw_pairs or (8 if args.quick else 10)
  if args.depthwise_compare or args.pointwise_compare:
    for field in ("depthwise",) * args.depthwise_compare + ("pointwise",) * args.pointwise_compare:
      print_lowering_compare(field, args.dw_batch, dw_size, dw_pairs)
    return
  names = args.backbones.split(",") if args.backbones else list(QUICK if args.quick else models.BACKBONES)
  reps = args.reps or (3 if args.quick else 10)

  rows = []
  cpu = jax.devices("cpu")[0]
  for name in names:
    rows.append(("cpu", bench(name, CPU_BATCH[name], "float32", reps, cpu)))
  if jax.default_backend() == "gpu":
    gpu = jax.devices("gpu")[0]
    for name in names:
      for dtype in ("float32", "bfloat16"):
        rows.append(("gpu", bench(name, GPU_BATCH[name], dtype, reps, gpu)))

  kinds = {"cpu": f"CPU ({os.cpu_count()} cores)"}
  if jax.default_backend() == "gpu":
    kinds["gpu"] = jax.devices("gpu")[0].device_kind
  print(f"\n## Backbone forward+backward throughput (hashing model, train mode; JAX {jax.__version__})\n")
  columns = ("device", "backbone", "input", "compute dtype", "batch", "compile s", "step ms",
             "images/s", "GFLOP/image")  # fmt: skip
  print(*harness.md_head(columns), sep="\n")
  for dev, r in rows:
    print(
      f"| {kinds[dev]} | {r['backbone']} | {r['size']}x{r['size']} | {r['dtype']} | {r['batch']} | "
      f"{r['compile_s']:.1f} | {r['step_ms']:.1f} | {r['images_s']:,.1f} | {r['gflop_img']:.2f} |"
    )
  if jax.default_backend() != "gpu":
    print("\nNo GPU visible to JAX: only the CPU rows were measured.")
  if args.quick:
    for field in LOWERINGS:
      print_lowering_compare(field, args.dw_batch, dw_size, dw_pairs)


if __name__ == "__main__":
  main()
