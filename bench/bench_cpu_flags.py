"""XLA:CPU options for the train step: each variant's JAX step against the default one, harness.

Every variant is the same JAX train step as bench_train's (small_cnn by default, fp32, the full SSDH loss)
in its own persistent worker process with its own XLA_FLAGS, one thread each, all bound to the same core
after an untimed compile and warm-up; the workers are then timed in alternating rounds and each variant is
reported as t_variant / t_default (< 1: the option helps) with median (IQR; min–max).

  .venv/bin/python -m bench.bench_cpu_flags [--quick] [--backbones small_cnn,mobilenet_v2] [--rounds 8]

Variants: oneDNN thunks for matmuls and convolutions (`--xla_cpu_use_onednn`), unsafe fast math
(`--xla_cpu_enable_fast_math`), XNNPACK off (`--xla_cpu_use_xnnpack=false`, on by default), the fast-runtime
optimisation preset (`--xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_RUNTIME`), convolutions out of YNNPACK fusions
(`--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`).
"""

from __future__ import annotations

import argparse
import os

from bench import harness, train_sides
from bench.train_setup import IMAGE_SIZE

VARIANTS = {
  "default": "",
  "onednn": "--xla_cpu_use_onednn=true",
  "fast_math": "--xla_cpu_enable_fast_math=true",
  "no_xnnpack": "--xla_cpu_use_xnnpack=false",
  "fast_runtime_preset": "--xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_RUNTIME",
  # Convolutions out of YNNPACK fusions, to XLA's Eigen kernels: weight gradients 2.2x faster
  # (bench/results/conv_grads_cpu.md)
  "no_ynn_conv": "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",
}
BATCH = {"small_cnn": 32, "mobilenet_v2": 8, "vgg_f": 8}


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--backbones", default="small_cnn")
  ap.add_argument("--variants", default=",".join(VARIANTS))
  ap.add_argument("--rounds", type=int, default=8)
  ap.add_argument("--per-round", type=int, default=2)
  ap.add_argument(
    "--quick", action="store_true", help="small_cnn, default vs oneDNN, 3 rounds (`make bench`)"
  )
  args = ap.parse_args()
  if args.quick:
    args.backbones, args.variants, args.rounds = "small_cnn", "default,onednn", 3
  names = [v for v in args.variants.split(",") if v]
  if "default" not in names:
    names.insert(0, "default")
  base = os.environ.get("XLA_FLAGS", "")
  for backbone in args.backbones.split(","):
    size = IMAGE_SIZE[backbone]
    group = train_sides.build_group(
      backbone, "float32", BATCH.get(backbone, 8), image_size=size, threads=1, torch_dev=None, warmup=1,
      loss_reps=0, cores=[0],
    )  # fmt: skip
    spec = group.sides[0].spec
    sides = [
      train_sides.Side(v, f"JAX {VARIANTS[v] or 'default XLA_FLAGS'}", "jax", spec,
                       env={"XLA_FLAGS": f"{base} {VARIANTS[v]}".strip()})
      for v in names
    ]  # fmt: skip
    # compile in parallel; nothing is timed before all are ready
    train_sides.start_sides(sides, train_sides.worker_env(False), parallel=True, deadline=None)
    live = {s.key: s.worker for s in sides if s.worker is not None}
    try:
      times = harness.interleave(live, args.rounds, per_round=args.per_round)
    finally:
      train_sides.close_sides(sides)
    print(
      f"\n{backbone}, batch {BATCH.get(backbone, 8)}, {size} px, fp32 train step; {harness.machine_header(1)}\n"
    )
    columns = (
      "variant",
      "XLA_FLAGS",
      "step ms (median, context)",
      "t_variant / t_default median (IQR; min–max), n",
    )
    print(*harness.md_head(columns), sep="\n")
    for s in sides:
      if s.key not in times:
        print(f"| {s.key} | `{VARIANTS[s.key]}` | {s.error or 'not run'} | |")
        continue
      step_ms = 1e3 * sorted(times[s.key])[len(times[s.key]) // 2]
      ratio = "1 (reference)" if s.key == "default" else harness.ratio_summary(times, s.key, "default")
      print(f"| {s.key} | `{VARIANTS[s.key] or '-'}` | {step_ms:.1f} | {ratio} |")


if __name__ == "__main__":
  main()
