"""Time of the jitted SSDH loss + its gradient (and of its index selection alone) on the local backend.

    .venv/bin/python bench/bench_loss.py            # N = 128 … 8192; k = 48
    .venv/bin/python bench/bench_loss.py --quick    # N = 128, 256, 1024; fewer repetitions

Prints a Markdown table with the per-part split, each part its own jitted program: the online graph (the
registered builder alone), the other index draws (rank triplets, pseudo-label pairs: all selection minus the
graph, a difference of medians) and the terms with their gradient given fixed indices. `time_loss(n, k, ...)` is importable (e.g. to report the loss's share of a train step).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from configs.default import get_config
from ssdh_jax import graph, losses


def make_inputs(n: int, k: int, num_classes: int = 10, labeled_fraction: float = 0.5, seed: int = 0):
  """A random global batch: outputs dict (codes, class_logits), multi-hot labels (N,C), labeled (N,)."""
  rng = np.random.default_rng(seed)
  labeled = rng.random(n) < labeled_fraction
  labels = (rng.random((n, num_classes)) < 0.2).astype(np.float32)
  labels[np.arange(n), rng.integers(0, num_classes, n)] = 1.0
  labels[~labeled] = 0.0
  outputs = {
    "codes": jnp.asarray(1.0 / (1.0 + np.exp(-rng.normal(size=(n, k)))), jnp.float32),
    "class_logits": jnp.asarray(rng.normal(size=(n, num_classes)), jnp.float32),
  }
  return outputs, jnp.asarray(labels), jnp.asarray(labeled)


def _time(fn, args, reps: int) -> tuple[float, float]:
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))  # compile + first run
  first = time.perf_counter() - t0
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return first, float(np.median(times))


def time_loss(
  n: int,
  k: int = 48,
  *,
  reps: int = 5,
  loss_cfg=None,
  num_classes: int = 10,
  labeled_fraction: float = 0.5,
  selection_only: bool = False,
  seed: int = 0,
) -> dict[str, float]:
  """Median wall time of the jitted loss + gradient w.r.t. the model outputs for a global batch of n rows.

  Args:
    n: global batch size; k: code length.
    reps: timed repetitions after the compile run.
    loss_cfg: config.loss (default: configs.default); cfg.name picks the loss.
    num_classes, labeled_fraction, seed: the random batch.
    selection_only: also time ssdh_sample alone (the sorting / sampling part) and the graph builder alone.

  Returns:
    dict with 'compile_s' (first call, compile included), 'step_ms' (median loss+grad), and 'select_ms',
    'graph_ms', 'terms_ms' (the terms' gradient given the indices) when selection_only.
  """
  cfg = loss_cfg if loss_cfg is not None else get_config().loss
  outputs, labels, labeled = make_inputs(n, k, num_classes, labeled_fraction, seed)
  fn = losses.get_loss(cfg.name)
  if cfg.name == "dpsh":
    outputs = {"hash_logits": jnp.log(outputs["codes"]) - jnp.log1p(-outputs["codes"])}
  step = jax.jit(jax.value_and_grad(lambda o, y, m, key: fn(o, y, m, key, cfg), has_aux=True))
  key = jax.random.PRNGKey(seed)
  first, med = _time(step, (outputs, labels, labeled, key), reps)
  out = {"compile_s": first, "step_ms": 1e3 * med}
  if selection_only and cfg.name == "ssdh":
    sel = jax.jit(lambda o, y, m, key: losses.ssdh_sample(o, y, m, key, cfg))
    out["select_ms"] = 1e3 * _time(sel, (outputs, labels, labeled, key), reps)[1]
    rows = jnp.arange(n, dtype=jnp.int32)
    graph_only = jax.jit(
      lambda o, key: losses.online_graph(o, cfg, graph.anchor_bits(key, rows, 2), rows, rows)
    )
    out["graph_ms"] = 1e3 * _time(graph_only, (outputs, key), reps)[1]
    sample = sel(outputs, labels, labeled, key)
    terms = jax.jit(jax.grad(lambda o, y, m: losses.ssdh_terms(o, y, m, sample, cfg)[0]))
    out["terms_ms"] = 1e3 * _time(terms, (outputs, labels, labeled), reps)[1]
  return out


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--quick", action="store_true", help="N up to 1024 and fewer repetitions (< 2 min on CPU)"
  )
  parser.add_argument("--k", type=int, default=48)
  parser.add_argument("--loss", default="ssdh", choices=losses.available_losses())
  args = parser.parse_args(argv)
  sizes = (128, 256, 1024) if args.quick else (128, 256, 1024, 2048, 4096, 8192)
  cfg = get_config().loss
  cfg.name = args.loss
  dev = jax.devices()[0]
  print(f"backend: {dev.platform} ({dev.device_kind}), {len(jax.devices())} device(s), jax {jax.__version__}")
  print(f"loss: {cfg.name} ({cfg.variant}), k = {args.k}, labeled fraction 0.5, 10 classes\n")
  print(
    "| N | k | compile + first run (s) | loss + grad (ms) | selection only (ms) | graph (ms) | other draws (ms) "
    "| terms + grad (ms) | per anchor (µs) |"
  )
  print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
  for n in sizes:
    reps = (3 if n >= 4096 else 5) if args.quick else (3 if n >= 4096 else 20)
    r = time_loss(n, args.k, reps=reps, loss_cfg=cfg, selection_only=True)
    if "select_ms" in r:
      parts = (r["select_ms"], r["graph_ms"], r["select_ms"] - r["graph_ms"], r["terms_ms"])
      sel = " | ".join(f"{v:.2f}" for v in parts)
    else:
      sel = " | ".join(["–"] * 4)
    print(
      f"| {n} | {args.k} | {r['compile_s']:.2f} | {r['step_ms']:.2f} | {sel} | {1e3 * r['step_ms'] / n:.1f} |",
      flush=True,
    )


if __name__ == "__main__":
  main()
