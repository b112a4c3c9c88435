"""pmap vs jit + shard_map around the same SSDH train step body, paired in one process.

The step is bench_train's (configs/default.py, the full multi-label SSDH loss, a fixed synthetic batch), built
by `train_lib.build_training` once per wrapper of `ssdh_jax.mesh.MODES`; each is compiled (timed apart), then
the two alternate for --rounds rounds of --per-round steps (bench/harness.py). Reported per backbone:
t(shard_map) / t(pmap) per round, median (IQR; min–max), and the compile time of each.

  .venv/bin/python -m bench.bench_wrappers [--quick] [--backbones small_cnn,mobilenet_v2] [--rounds N]
      [--per-round N] [--batch N] [--threads N]

--quick: small_cnn, 4 rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from bench import harness

_ARGS = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
_ARGS.add_argument("--quick", action="store_true", help="small_cnn, 4 rounds")
_ARGS.add_argument("--backbones", default="small_cnn", help="comma-separated backbones")
_ARGS.add_argument("--batch", type=int, default=0, help="batch (default: bench_train's quick CPU batch)")
_ARGS.add_argument("--rounds", type=int, default=0, help="paired rounds (default 16; --quick: 4)")
_ARGS.add_argument("--per-round", type=int, default=1, help="steps per side per round, median")
_ARGS.add_argument("--threads", type=int, default=0, help="threads (default 1 on CPU, all on GPU)")

if __name__ == "__main__":
  ARGS = _ARGS.parse_args()
  ARGS.threads = ARGS.threads or harness.default_threads(harness.likely_gpu())
  harness.pin_threads(ARGS.threads)  # before numpy / jax start their thread pools

from bench.train_setup import IMAGE_SIZE, QUICK_CPU_BATCH, make_config, synthetic_batch  # noqa: E402


def compare_wrappers(
  backbone: str, batch: int, rounds: int, per_round: int = 1, num_devices: int = 1
) -> dict[str, Any]:
  """pmap vs jit + shard_map around the same train step body, in this process: compile time of each, then
  `rounds` paired rounds (harness.interleave). Returns compile seconds, the per-round ratio
  t(shard_map) / t(pmap) (harness.ratio_stats) and both median step times."""
  import jax

  from ssdh_jax import mesh, train_lib

  cfg = make_config(backbone, batch, "float32")
  b = synthetic_batch(batch, IMAGE_SIZE[backbone])
  runs: dict[str, dict[str, Any]] = {}
  for mode in mesh.MODES:
    dm = mesh.create(mode, num_devices)
    model, tx, _, step_fn = train_lib.build_training(cfg, dm)
    state = dm.replicate(train_lib.create_train_state(cfg, model, tx, jax.random.PRNGKey(cfg.seed)))
    placed = dm.shard_batch(b)
    t = time.perf_counter()
    state, m = step_fn(state, placed)
    jax.block_until_ready((state, m))
    runs[mode] = {"fn": step_fn, "state": state, "batch": placed, "compile_s": time.perf_counter() - t}

  def stepper(r: dict[str, Any]):
    def go():
      r["state"], m = r["fn"](r["state"], r["batch"])
      jax.block_until_ready((r["state"], m))

    return go

  times = harness.interleave({m: stepper(runs[m]) for m in mesh.MODES}, rounds, per_round=per_round)
  return {
    "backbone": backbone,
    "batch": batch,
    "devices": num_devices,
    "compile_s": {m: runs[m]["compile_s"] for m in mesh.MODES},
    "step_s": {m: statistics.median(times[m]) for m in mesh.MODES},
    "ratio": harness.ratio_stats(times, "shard_map", "pmap"),
    "ratio_summary": harness.ratio_summary(times, "shard_map", "pmap"),
  }


def main(args: argparse.Namespace) -> None:
  import jax

  names = ["small_cnn"] if args.quick else args.backbones.split(",")
  rounds = args.rounds or (4 if args.quick else 16)
  print(
    f"\n## Train step: jit + shard_map vs pmap (same body), {jax.default_backend()}; paired in one process: "
    f"{harness.machine_header(args.threads)}; {rounds} alternating rounds of {args.per_round} step(s)\n"
  )
  columns = ("backbone", "batch", "pmap step ms", "shard_map step ms",
             "t(shard_map) / t(pmap) median (IQR; min–max), n", "compile s pmap / shard_map")  # fmt: skip
  print(*harness.md_head(columns), sep="\n")
  for name in names:
    bsz = args.batch or QUICK_CPU_BATCH[name]
    r = compare_wrappers(name, bsz, rounds, args.per_round)
    print(
      f"| {name} | {bsz} | {1e3 * r['step_s']['pmap']:.1f} | {1e3 * r['step_s']['shard_map']:.1f} | "
      f"{r['ratio_summary']} | {r['compile_s']['pmap']:.1f} / {r['compile_s']['shard_map']:.1f} |"
    )


if __name__ == "__main__":
  main(ARGS)
