"""Start-up compile of the model initialiser: XLA's default backend optimisation vs the options
`models.init_variables` uses (`models.INIT_COMPILER_OPTIONS`: no backend optimisation), harness.

The initialiser runs once per start, so its compile time is pure start-up cost. Each round traces, lowers and compiles the
initialiser once with each setting (alternating which goes first; in-memory caches cleared, no
persistent cache), and reports the time ratio default / ours per backbone, plus the largest difference
between the parameters the two programs draw (a few float32 ulps at most).

  .venv/bin/python -m bench.bench_startup [--quick] [--backbones small_cnn,mobilenet_v2] [--rounds N]
"""

from __future__ import annotations

import argparse
import os

from bench import harness


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--quick", action="store_true", help="small_cnn only, 3 rounds")
  ap.add_argument("--backbones", default="small_cnn,mobilenet_v2")
  ap.add_argument("--rounds", type=int, default=8)
  ap.add_argument("--threads", type=int, default=1)
  args = ap.parse_args()
  harness.pin_threads(args.threads)
  os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)

  names = ["small_cnn"] if args.quick else args.backbones.split(",")
  rounds = 3 if args.quick else args.rounds
  print(f"\nInitialiser compile, {harness.machine_header(args.threads)}\n")
  columns = ("backbone", "input", "default compile s (median)", "ours s (median)",
             "t_default / t_ours", "max param diff")  # fmt: skip
  print(*harness.md_head(columns), sep="\n")
  for name in names:
    _measure(name, rounds)


def _measure(name: str, rounds: int) -> None:
  import jax
  import jax.numpy as jnp
  import numpy as np

  from configs import default
  from ssdh_jax import models

  c = default.get_config()
  c.model.name = name
  size = models.backbone_spec(name).image_size
  model = models.build_model(c.model)
  k1, k2 = jax.random.split(jax.random.key(0))
  x = jnp.zeros((2, size, size, 3), jnp.float32)
  compiled = {}

  def compile_with(tag, options):
    def run():  # a fresh function each time: nothing cached between calls, lowering included on both sides
      jax.clear_caches()
      fn = jax.jit(lambda a, b, x: model.init({"params": a, "dropout": b}, x, train=False))
      lowered = fn.lower(k1, k2, x)
      compiled[tag] = lowered.compile(compiler_options=options) if options else lowered.compile()

    return run

  times = harness.interleave(
    {"default": compile_with("default", None), "ours": compile_with("ours", models.INIT_COMPILER_OPTIONS)},
    rounds,
  )
  a, b = compiled["default"](k1, k2, x), compiled["ours"](k1, k2, x)
  diff = max(
    float(np.max(np.abs(np.asarray(u) - np.asarray(v))))
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )
  med = {k: float(np.median(v)) for k, v in times.items()}
  print(f"| {name} | {size} px | {med['default']:.2f} | {med['ours']:.2f} | "
        f"{harness.ratio_summary(times, 'default', 'ours')} | {diff:.1e} |")  # fmt: skip


if __name__ == "__main__":
  main()
