"""Train-step throughput of the full SSDH step, JAX (ssdh_jax.train_lib) against a PyTorch port, paired.

One timed step = uint8 batch → (on-device crop + flip, when asked) → preprocessing → model (train mode: dropout,
BatchNorm batch statistics) → the full SSDH loss (multi_label variant, graph on the codes, all four terms) →
gradients → SGD update. The JAX step is exactly the trainer's: `train_lib.build_training` from
configs/default.py (pmap over 1 device, the psum / all_gather collectives included). The PyTorch step
(bench/peers/torch_ref.py) is the same network, the same loss and SGD with momentum. A fixed synthetic batch
(multi-hot labels, every other row labeled) is fed, so the host input pipeline is not measured.

How it is measured (bench/harness.py): every side (the JAX step, and each PyTorch configuration) is a persistent
subprocess with the same thread count (--threads; default 1 on CPU, every core on a GPU). All of them build,
compile and warm up at once (not timed; spread over every core; --sequential-warmup: one by one), then every
thread of every side is bound to the same cores (the first --threads), and the parent times one backbone's
sides in alternating rounds (A B C, then C B A, ...), each round the median of --per-round steps, while the
other sides wait idle. Reported per backbone: each PyTorch configuration's step time / the JAX step time per
round, median (IQR; min–max) over the rounds (> 1: JAX is faster), images/s as context, the best PyTorch
configuration (highest images/s) and JAX against it. --quick (mobilenet_v2 + small_cnn, small batches, 8
rounds of 2 steps) takes about 7.5 min on a loaded 2-core machine, most of it compiling.

PyTorch, each at its best: eager with explicit threads (CPU), channels_last and contiguous memory (model and
input; both are timed, the faster counts), torch.compile (channels_last), bf16 autocast where the dtype is
bf16 (GPU: cudnn.benchmark, TF32 allowed as JAX's default precision allows it). --quick skips torch.compile of
the 224-px nets on CPU (inductor takes minutes there) and says so.

  .venv/bin/python -m bench.bench_train [--quick] [--backbones vgg_f,mobilenet_v2] [--batch N] [--threads N]
                                        [--rounds N] [--per-round N] [--no-compile] [--no-torch]
                                        [--dtypes float32,bfloat16] [--augment] [--peak-tflops FP32[,BF16]]

The sides are bench/train_worker.py processes started by bench/train_sides.py; MFU and the tables are
bench/train_report.py; the numeric check of the PyTorch loss is bench/peers/loss_check.py. pmap vs
jit + shard_map around the same step body: bench/bench_wrappers.py.

MFU = model FLOPs per step / step time / peak, with model FLOPs = 3 × XLA's cost_analysis of the train-mode
forward (XLA's count of the whole compiled step is shown too, but it counts depthwise-conv weight gradients as
dense convolutions); PyTorch rows use the JAX counts at the same batch. "loss share" = time of the jitted (or
eager, for torch) loss + gradient on outputs of the same shapes, divided by the step time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

from bench import harness, train_report, train_setup, train_sides
from bench.peers import loss_check


def main(argv: list[str] | None = None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="mobilenet_v2 + small_cnn, small batches, 8 rounds")
  ap.add_argument(
    "--backbones", default="", help=f"comma-separated subset of {','.join(train_setup.BACKBONES)}"
  )
  ap.add_argument(
    "--batch", type=int, default=0, help="batch for every backbone (default: per device/backbone)"
  )
  ap.add_argument(
    "--threads", type=int, default=0, help="threads (and cores) per side (default 1 on CPU, all on GPU)"
  )
  ap.add_argument("--rounds", type=int, default=0, help="paired rounds (default 8 quick, 10 CPU, 20 GPU)")
  ap.add_argument(
    "--per-round", type=int, default=0, help="steps per side per round, median (default 2, 5 GPU)"
  )
  ap.add_argument(
    "--warmup", type=int, default=0, help="untimed steps after compile (default 1 quick, 2; GPU 5)"
  )
  ap.add_argument(
    "--dtypes", default="", help="compute dtypes (default float32 on CPU, float32,bfloat16 GPU)"
  )
  ap.add_argument("--augment", action="store_true", help="on-device crop_flip from 256 px (224-px nets)")
  ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile sides")
  ap.add_argument("--no-torch", action="store_true", help="JAX rows only")
  ap.add_argument("--timeout", type=float, default=900.0, help="seconds for a JAX / eager side to be ready")
  ap.add_argument(
    "--compile-timeout",
    type=float,
    default=0.0,
    help="seconds for a torch.compile side to be ready (default 240 CPU quick, 900 else)",
  )
  ap.add_argument(
    "--peak-tflops", default="", help="peak TFLOP/s for MFU: FP32[,BF16] (default by device kind)"
  )
  ap.add_argument(
    "--sequential-warmup",
    action="store_true",
    help="start the sides one after another, each group just before its timing (default: every side of "
    "every group at once, spread over all cores, then each group timed on the pinned cores)",
  )
  ap.add_argument("--json", default="", help="also write the results as JSON here")
  args = ap.parse_args(argv)
  t_start = time.perf_counter()
  import jax

  gpu = jax.default_backend() == "gpu"
  threads = args.threads or harness.default_threads(gpu)
  names = (
    args.backbones.split(",")
    if args.backbones
    else list(train_setup.QUICK if args.quick else train_setup.BACKBONES)
  )
  rounds = args.rounds or (8 if args.quick else (20 if gpu else 10))
  per_round = args.per_round or (5 if gpu else 2)
  warmup = args.warmup or (5 if gpu else (1 if args.quick else 2))
  loss_reps = 3 if args.quick else 10
  dtypes = args.dtypes.split(",") if args.dtypes else (["float32", "bfloat16"] if gpu else ["float32"])
  peak_override = [float(v) for v in args.peak_tflops.split(",")] if args.peak_tflops else None
  compile_timeout = args.compile_timeout or (240.0 if args.quick and not gpu else 900.0)
  notes: list[str] = []
  load_start = os.getloadavg()

  torch_dev, torch_ver = None, None
  if args.no_torch:
    notes.append("PyTorch rows disabled (--no-torch).")
  else:
    torch_dev, torch_ver = train_sides.torch_device(gpu, notes)
  sanity = None
  if torch_dev is not None:
    from configs.default import get_config

    try:
      sanity = loss_check.sanity_check(get_config().loss)
    except Exception as e:
      sanity = f"not run: {type(e).__name__}: {e}"

  loss_cfg = train_setup.torch_loss_cfg() if torch_dev else None
  spread = not args.sequential_warmup
  cores, warm_cores = train_sides.core_plan(threads, spread)
  groups = []
  for name in names:
    size = train_setup.IMAGE_SIZE[name]
    batch = args.batch or (
      train_setup.GPU_BATCH
      if gpu
      else (train_setup.QUICK_CPU_BATCH if args.quick else train_setup.CPU_BATCH)[name]
    )
    compile_: bool | str = True
    if args.no_compile:
      compile_ = "--no-compile"
    elif args.quick and not gpu and size > 64:
      compile_ = "--quick on CPU (inductor takes minutes on a 224-px net; run without --quick)"
    augment = args.augment and size > 64
    for dtype in dtypes:
      groups.append(
        train_sides.build_group(
          name,
          dtype,
          batch,
          image_size=size,
          threads=threads,
          torch_dev=torch_dev,
          warmup=warmup,
          loss_reps=loss_reps,
          augment=augment,
          stored_size=256 if augment else size,
          compile_=compile_,
          timeout=args.timeout,
          compile_timeout=compile_timeout,
          loss_cfg=loss_cfg,
          cores=cores,
          warm_cores=warm_cores,
        )
      )
  results = train_sides.run_groups(
    groups, rounds, per_round, train_sides.worker_env(gpu), parallel_warmup=spread, warm_all_first=spread
  )

  device_kind = (
    jax.devices()[0].device_kind
    if gpu
    else f"CPU ({os.cpu_count()} cores, {platform.processor() or 'x86_64'})"
  )
  train_report.derive(results, device_kind if gpu else "", peak_override)
  import jaxlib

  header = harness.machine_header(threads)
  print(f"\n## SSDH train step: JAX vs PyTorch ({device_kind})\n")
  print(
    f"jax {jax.__version__} / jaxlib {jaxlib.__version__}; torch {torch_ver or 'not installed'}; "
    f"loss: ssdh multi_label, graph on codes, k={train_setup.BITS}, C={train_setup.NUM_CLASSES}, half the batch labeled; "
    f"{rounds} rounds × median of {per_round} step(s) per side after compile + {warmup} warm-up step(s); "
    f"load average at the start {', '.join(f'{v:.1f}' for v in load_start)}.\n"
  )
  for line in train_report.markdown_tables(results, header):
    print(line)
  print()
  print("- t_side / t_JAX > 1: JAX is faster. Absolute step times and images/s are context only: the ratio is "
        "taken per round, with both sides timed back to back under the same load.")  # fmt: skip
  if sanity:
    print(f"- Numeric sanity (CPU, JAX loss vs torch_ref loss): {sanity}")
  if not gpu:
    peak_txt = "given by --peak-tflops" if peak_override else "n/a on CPU unless --peak-tflops is given"
    print(f"- No GPU visible to JAX: CPU rows, MFU {peak_txt}.")
  else:
    print("- MFU peaks (dense): H100/H200 989 bf16 / 67 fp32, A100 312 / 19.5 TFLOP/s, or --peak-tflops.")
    print("- fp32 rows: JAX's default precision and torch (TF32 enabled here) may use TF32 on Ampere+.")
  print(
    "- model GFLOP/step = 3 × XLA's count of the train-mode forward (the MFU numerator); XLA step GFLOP = "
    "cost_analysis of the whole compiled step (forward, backward, loss, update), which counts a grouped "
    "(depthwise) convolution's weight gradient as a dense one and so overstates MobileNetV2 several-fold."
  )
  for g in results:
    cnt = [r["torch_flops"] for r in g["rows"] if r.get("torch_flops")]
    if cnt:
      dense = (
        " (it counts a depthwise convolution's backward as dense)" if g["backbone"] == "mobilenet_v2" else ""
      )
      print(
        f"- {g['backbone']}: torch FlopCounterMode counts {cnt[0] / 1e9:,.1f} GFLOP for one eager step{dense}."
      )
    for r in g["rows"]:
      if r.get("finite", 1.0) < 1.0:
        notes.append(f"{g['backbone']} {r['label']}: non-finite loss/gradients on the synthetic batch.")
      if r.get("note"):
        notes.append(f"{g['backbone']} {r['label']}: {r['note']}")
  srcs = sorted({r["loss_src"] for g in results for r in g["rows"] if r.get("loss_src")})
  if srcs:
    print(f"- loss share from {', '.join(srcs)} (loss + grad w.r.t. the outputs, same N, k, C); n/a for "
          "torch.compile sides.")  # fmt: skip
  print("- warm-up s: build + compile + warm-up steps of each side (not timed); compile s: AOT compile of the "
        "JAX step / first torch.compile step.")  # fmt: skip
  for n in notes:
    print(f"- {n}")
  print(f"- wall time of this command: {time.perf_counter() - t_start:.0f} s")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(
        {"header": header, "device_kind": device_kind, "groups": results, "notes": notes}, f, indent=1
      )


if __name__ == "__main__":
  main()
