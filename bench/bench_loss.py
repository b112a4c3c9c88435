"""SSDH loss + gradient: ssdh_jax (jitted) vs the PyTorch port at its best, paired; and the JAX time split.

    .venv/bin/python -m bench.bench_loss            # N = 128 … 8192; k = 48; 1 thread per side, 8 rounds
    .venv/bin/python -m bench.bench_loss --quick    # N = 128, 256, 1024; 3 rounds
    .venv/bin/python -m bench.bench_loss --threads 2

Peer: `bench/peers/torch_ref.ssdh_loss`, a vectorised PyTorch port of the same loss (same terms, normalisers and
sampling rules; `bench/peers/loss_check.sanity_check` replays ssdh_jax's random words through it and gets the same indices
and the same loss and gradients, printed first). Its configurations: eager, and torch.compile (inductor) where it
compiles within the deadline; the faster is the peer at its best, chosen per N by a short interleaved run. Both
sides run in this one process with the same thread count (`harness.pin_threads` before numpy / jax / torch are
imported; torch.set_num_threads), timed in alternating rounds (bench/harness.py): t_PyTorch / t_ssdh_jax per
round, median (IQR; min–max) — > 1 means ssdh_jax is faster. Each side computes the loss and its gradient with
respect to the model outputs (codes, class logits) of a random batch of N rows, half labeled.

A second table splits the JAX time (context, absolute): the online graph (the registered builder alone), the
other index draws (rank triplets, pseudo-label pairs: all selection minus the graph, a difference of medians)
and the terms with their gradient given fixed indices, each its own jitted program. `time_loss(n, k, ...)` is
importable (bench_train reports the loss's share of a train step with it).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from bench import harness

_ARGS = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
_ARGS.add_argument("--quick", action="store_true", help="N up to 1024 and 3 rounds (< 3 min on CPU)")
_ARGS.add_argument("--k", type=int, default=48)
_ARGS.add_argument(
  "--loss", default="ssdh", help="registered loss name (the PyTorch peer exists for ssdh only)"
)
_ARGS.add_argument("--threads", type=int, default=1, help="threads per side (both sides, explicitly)")
_ARGS.add_argument("--rounds", type=int, default=0, help="paired rounds (default 8; --quick: 3)")
_ARGS.add_argument("--sizes", default="", help="comma-separated N (default: 128,256,1024,2048,4096,8192)")
_ARGS.add_argument("--no-compile", action="store_true", help="skip the torch.compile configuration")
_ARGS.add_argument(
  "--peer-max-n", type=int, default=4096, help="largest N for the PyTorch port (it needs > 20 GB at N = 8192)"
)
_ARGS.add_argument(
  "--compile-deadline", type=float, default=300.0, help="seconds for torch.compile's first call"
)

if __name__ == "__main__":
  ARGS = _ARGS.parse_args()
  CORES = harness.pin_threads(ARGS.threads)  # before numpy / jax / torch are imported
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs.default import get_config  # noqa: E402
from ssdh_jax import graph, losses  # noqa: E402


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


# ------------------------------------------------------------------------------------------------ the peer


def torch_sides(
  n: int, k: int, cfg, num_classes: int, threads: int, compile_: bool, deadline: float, seed: int = 0
):
  """{label: one loss + backward call} of the PyTorch port on the same random batch, and notes on what did
  not run. torch.compile gets `deadline` seconds for its first call (compilation), else it is left out."""
  import torch

  from bench.peers import torch_ref

  torch.set_num_threads(threads)
  outputs, labels, labeled = make_inputs(n, k, num_classes, seed=seed)
  tcfg = {**cfg.to_dict(), "neg_window": list(cfg.neg_window)}
  codes = torch.from_numpy(np.array(outputs["codes"])).requires_grad_()
  logits = torch.from_numpy(np.array(outputs["class_logits"])).requires_grad_()
  lab, msk = torch.from_numpy(np.array(labels)), torch.from_numpy(np.array(labeled))

  def loss_grad(o):
    loss = torch_ref.ssdh_loss(o, lab, msk, tcfg)[0]
    return torch.autograd.grad(loss, [o["codes"], o["class_logits"]])

  sides = {"eager": lambda: loss_grad({"codes": codes, "class_logits": logits})}
  notes = []
  if compile_:
    compiled = torch.compile(loss_grad, dynamic=False)  # specialised to this N, as jax.jit is
    # a graph that inductor cannot take (or takes too long over) is a finding, not a crash
    why, secs = harness.call_with_deadline(
      lambda: compiled({"codes": codes, "class_logits": logits}), deadline
    )
    if why.startswith("did not finish"):
      notes.append(f"N={n}: torch.compile did not finish its first call in {deadline:.0f} s; left out")
    elif why:
      notes.append(f"N={n}: torch.compile {why}; left out")
    else:
      notes.append(f"N={n}: torch.compile first call (compilation) {secs:.1f} s")
      sides["compile"] = lambda: compiled({"codes": codes, "class_logits": logits})
  return sides, notes


def jax_side(n: int, k: int, cfg, num_classes: int, seed: int = 0):
  """One jitted loss + gradient call of ssdh_jax on the batch make_inputs gives (compiled here)."""
  outputs, labels, labeled = make_inputs(n, k, num_classes, seed=seed)
  fn = losses.get_loss(cfg.name)
  step = jax.jit(jax.grad(lambda o, y, m, key: fn(o, y, m, key, cfg)[0]))
  key = jax.random.PRNGKey(seed)
  jax.block_until_ready(step(outputs, labels, labeled, key))
  return lambda: jax.block_until_ready(step(outputs, labels, labeled, key))


def main() -> None:
  args = ARGS
  rounds = args.rounds or (3 if args.quick else 8)
  if args.sizes:
    sizes = tuple(int(v) for v in args.sizes.split(","))
  else:
    sizes = (128, 256, 1024) if args.quick else (128, 256, 1024, 2048, 4096, 8192)
  cfg = get_config().loss
  cfg.name = args.loss
  num_classes = 10
  dev = jax.devices()[0]
  print(f"Command: `python -m bench.bench_loss {' '.join(sys.argv[1:])}`  ")
  print(f"{harness.machine_header(args.threads)}; cores {CORES}  ")
  print(f"JAX {jax.__version__} ({dev.platform}); loss: {cfg.name} ({cfg.variant}), k = {args.k}, "
        f"labeled fraction 0.5, {num_classes} classes\n")  # fmt: skip
  peer = cfg.name == "ssdh"
  if peer:
    try:
      import torch

      from bench.peers.loss_check import sanity_check

      print(f"PyTorch {torch.__version__}, {args.threads} thread(s). Numeric check: {sanity_check(cfg)}\n")
    except ImportError as e:
      peer = False
      harness.peer_missing("PyTorch", e)
      print(f"No PyTorch peer ({e}).\n")
  if peer:
    print(f"**t_PyTorch / t_ssdh_jax, loss + gradient w.r.t. the outputs** ({rounds} paired rounds per N; "
          "the PyTorch configuration is the faster of those listed, chosen per N by 2 interleaved rounds)\n")  # fmt: skip
    columns = ("N", "peer at its best", "ssdh_jax ms (context)", "peer ms (context)",
               "t_peer / t_ssdh_jax median (IQR; min–max), n", "other peer configs")  # fmt: skip
    print(*harness.md_head(columns, "rlrrll"), sep="\n")
    notes = []
    for n in sizes:
      if n > args.peer_max_n:
        notes.append(f"N={n}: no PyTorch row (--peer-max-n {args.peer_max_n}: the port's (N, N) int64 masks "
                     "took the 24 GiB machine out of memory at N = 8192); ssdh_jax alone in the split below")  # fmt: skip
        continue
      per_round = 3 if n <= 1024 else 1
      sides, why = torch_sides(n, args.k, cfg, num_classes, args.threads, not args.no_compile and n <= 4096,
                               args.compile_deadline)  # fmt: skip
      notes += why
      for fn in sides.values():  # warm-up
        fn()
      jx = jax_side(n, args.k, cfg, num_classes)
      if len(sides) > 1:
        pick = harness.interleave(sides, 2, per_round=per_round)
        best = min(pick, key=lambda name: float(np.median(pick[name])))
      else:
        best = "eager"
      times = harness.interleave({"ssdh_jax": jx, best: sides[best]}, rounds, per_round=per_round)
      others = ", ".join(
        f"{name} {1e3 * float(np.median(pick[name])):.1f} ms" for name in sides if name != best
      )
      print(f"| {n} | torch_ref {best} | {1e3 * float(np.median(times['ssdh_jax'])):.1f} | "
            f"{1e3 * float(np.median(times[best])):.1f} | {harness.ratio_summary(times, best, 'ssdh_jax')} | "
            f"{others if len(sides) > 1 else 'eager only'} |", flush=True)  # fmt: skip
    for note in notes:
      print(f"- {note}")
    print()
  print("**ssdh_jax time split** (context, absolute: medians of repeated calls)\n")
  columns = ("N", "k", "compile + first run (s)", "loss + grad (ms)", "selection only (ms)",
             "graph (ms)", "other draws (ms)", "terms + grad (ms)", "per anchor (µs)")  # fmt: skip
  print(*harness.md_head(columns, "rrrrrrrrr"), sep="\n")
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
