"""Backbone inference on the CPU, JAX (ssdh_jax) against PyTorch at its best, paired, same weights.

One timed call = a uint8 NHWC batch → preprocessing → backbone (inference: BatchNorm running statistics, no
dropout) → features, synchronised. Rows: MobileNetV2 at 96, 160 and 224 px, VGG-F and VGG-16 at 224 px, and,
as a user feels them, the frozen-prefix extraction (`feature_cache.extract` with the jitted prefix exactly as
`train_lib.input_view` builds it, 32-px images resized to 160 by `pipeline.eval_batches`, MobileNetV2 up to
features_18 as configs/cifar10_mobilenet_v2_cpu.py) and `evaluate.encode` (what eval.py runs: the whole hashing
model, 48 bits, codes packed; relaxed codes kept as for the database). The PyTorch peers of those two rows take
the same uint8 batches from the same host pipeline and run bench/peers/torch_ref.py's port of the network.

Same weights: MobileNetV2 loads the packaged ImageNet checkpoint when installed (else a seeded init); VGG-F and
VGG-16 a seeded Flax init; the JAX variables are exported to the PyTorch layout (ssdh_jax.weights) and loaded
with strict=True. Before any timing, every side's output on the timed batch is compared with the JAX side's:
max |Δ| / max |JAX| ≤ 1e-4 (fp32; summation order differs), else the row is reported as failed, not timed.

PyTorch at its best, every side timed, the fastest per row is "best": eager under torch.inference_mode with
channels_last model and input, eager contiguous NCHW, and torch.compile (inductor, channels_last, freezing on:
BatchNorm folded, weights prepacked for oneDNN). Threads set on both sides (torch.set_num_threads, one
interop thread; XLA: one intra-op thread at 1, its pool on the pinned cores at 2), every side its own process
bound to the same cores (bench/harness.py), rounds alternating in order, ratio = per-image time of the PyTorch
side / per-image time of JAX per round, median (IQR; min–max). > 1: JAX is faster.

  .venv/bin/python -m bench.bench_inference [--quick] [--threads 1,2] [--rows mbv2_160,vgg_f] [--rounds N]
      [--per-round N] [--no-compile] [--jax-variants stem_max_channels=0] [--out bench/results/inference_cpu.md]

--jax-variants adds more JAX sides to every MobileNetV2 backbone row, each a model override such as
depthwise=conv or pointwise=conv (';' joins several), or stem_max_channels=0 (the stem as XLA's convolution:
the default before issue 27), constants=1 (the variables closed over, compile-time constants, as train_lib's
prefix_fn has them) or xla_flags=... (more XLA_FLAGS for that worker); each is paired with the default JAX
side.
--quick: MobileNetV2 at 96 px, 1 thread, JAX vs eager channels_last, 4 rounds (< 2 min on 2 loaded cores).

  .venv/bin/python -m bench.bench_inference --stem-train 160,8 [--rounds N] [--threads 1]
      the train step with the stem's two lowerings, paired in one process (the stem change must not cost
      training what it gains inference)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from typing import Any

import numpy as np

from bench import harness
from bench.inference_worker import BITS, NUM_CLASSES, USER_IMAGES

TOL = 1e-4  # max |Δ| / max |JAX output|, fp32
# name: (backbone, input px, JAX batch, PyTorch batch). From `--sweep-batches` runs (bench/results/
# inference_cpu.md): PyTorch eager MobileNetV2 runs fastest per image at batch 8, JAX is flat over 8–64;
# VGG-F showed no clear preference on either side; VGG-16 stays at 8 to keep a round short.
ROWS = {
  "mbv2_96": ("mobilenet_v2", 96, 32, 8),
  "mbv2_160": ("mobilenet_v2", 160, 32, 8),
  "mbv2_224": ("mobilenet_v2", 224, 16, 8),
  "vgg_f": ("vgg_f", 224, 16, 16),
  "vgg16": ("vgg16", 224, 8, 8),
  # 256 images per call; JAX at eval batches of 128, PyTorch at its preferred 8
  "extract_mbv2_160": ("mobilenet_v2", 160, 128, 8),
  "encode_mbv2_160": ("mobilenet_v2", 160, 128, 8),
}
TORCH_SIDES = ("eager_cl", "compile_cl")  # --nchw adds eager contiguous NCHW (slower than channels_last here)
HEAVY = ("vgg16", "extract_mbv2_160", "encode_mbv2_160")  # one call per side per round: a call takes seconds
MULTI_THREAD_ROWS = ("mbv2_160", "mbv2_224", "vgg_f", "extract_mbv2_160")  # the rows with targets
SIDE_COLUMNS = ("row", "threads", "side", "batch", "t_side / t_JAX median (IQR; min–max), n", "time",
                "images/s", "max rel. diff")  # fmt: skip
SUMMARY_COLUMNS = ("row", "threads", "best PyTorch side", "t_best / t_JAX median (IQR; min–max), n", "target")
TORCH_LABEL = {
  "eager_cl": "eager, channels_last, inference_mode",
  "eager_nchw": "eager, contiguous NCHW, inference_mode",
  "compile_cl": "torch.compile (inductor, freezing), channels_last, inference_mode",
}


# ------------------------------------------------------------------------------------------------ weights


def prepare_weights(backbone: str, size: int, out_dir: str, hashing_heads: bool) -> dict[str, str]:
  """Writes the JAX variables (flattened .npz) and the same values as a torch_ref state dict (.npz); returns
  their paths and where the values came from."""
  import jax
  from flax import traverse_util

  from ssdh_jax import models, weights

  source = f"Flax init, seed 0 ({size} px)"
  if hashing_heads:
    model = models.build_model({"name": backbone, "bits": BITS, "num_classes": NUM_CLASSES})
  else:
    model = models.build_backbone(backbone)
  variables = models.init_variables(model, jax.random.key(0), size)
  packaged = weights.packaged_weights(backbone) if backbone == "mobilenet_v2" else None
  if packaged:
    variables = weights.load_pretrained(variables, packaged, backbone)
    source = f"ImageNet ({os.path.basename(packaged)}, packaged)"
  variables = jax.device_get(variables)
  if backbone == "vgg_f":
    sd = vgg_f_torch_state(weights.variables_to_vgg_f_npz(variables))
  else:
    sd = weights.variables_to_torch_state_dict(variables, backbone)
  sd = {k: v for k, v in sd.items() if not k.startswith("classifier.") or backbone != "mobilenet_v2"}
  if hashing_heads:
    sd = {f"backbone.{k}": v for k, v in sd.items()}
    for head in ("hash", "classifier"):
      sd[f"{head}.weight"] = np.asarray(variables["params"][head]["kernel"]).T.copy()
      sd[f"{head}.bias"] = np.asarray(variables["params"][head]["bias"])
  tag = f"{backbone}{'_heads' if hashing_heads else ''}"
  paths = {
    "jax": os.path.join(out_dir, f"{tag}_flax.npz"),
    "torch": os.path.join(out_dir, f"{tag}_torch.npz"),
  }
  flat = traverse_util.flatten_dict(dict(variables), sep="/")
  np.savez(paths["jax"], **{k: np.asarray(v) for k, v in flat.items()})
  np.savez(paths["torch"], **{k: np.asarray(v) for k, v in sd.items()})
  return {**paths, "source": source}


def vgg_f_torch_state(npz: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """ssdh_jax's VGG-F .npz layout (HWIO convs, fc6 a 6×6 filter) → torch_ref.VGGF's state dict."""
  conv_idx = {1: 0, 2: 4, 3: 8, 4: 10, 5: 12}
  sd = {}
  for i, j in conv_idx.items():
    sd[f"features.{j}.weight"] = np.ascontiguousarray(npz[f"conv{i}_w"].transpose(3, 2, 0, 1))
    sd[f"features.{j}.bias"] = npz[f"conv{i}_b"]
  fc6 = npz["fc6_w"]  # (6, 6, 256, 4096) → (4096, 256·6·6) in torch's (C, H, W) flatten order
  sd["classifier.0.weight"] = np.ascontiguousarray(fc6.transpose(3, 2, 0, 1).reshape(fc6.shape[3], -1))
  sd["classifier.0.bias"] = npz["fc6_b"]
  sd["classifier.3.weight"] = np.ascontiguousarray(npz["fc7_w"].T)
  sd["classifier.3.bias"] = npz["fc7_b"]
  return sd


# ------------------------------------------------------------------------------------------------ parent


def side_specs(row: str, args, weights_paths, tmp: str, threads: int, cores) -> list[dict[str, Any]]:
  backbone, size, jb, tb = ROWS[row]
  task = "extract" if row.startswith("extract") else "encode" if row.startswith("encode") else "backbone"
  common = {"row": row, "backbone": backbone, "size": size, "task": task, "threads": threads, "cores": cores}
  specs = [{**common, "key": "jax", "framework": "jax", "batch": jb, "weights": weights_paths["jax"]}]
  if task == "backbone" and backbone == "mobilenet_v2":
    for v in args.jax_variants:
      over = dict(kv.split("=", 1) for kv in v.split(";"))
      specs.append({**specs[0], "key": f"jax[{v}]", "overrides": over})
  if args.torch:
    sides = ["eager_cl"] if args.quick else list(TORCH_SIDES) + (["eager_nchw"] if args.nchw else [])
    if args.no_compile and "compile_cl" in sides:
      sides.remove("compile_cl")
    if task != "backbone":
      sides = [s for s in sides if s != "eager_nchw"]
    for s in sides:
      specs.append(
        {**common, "key": f"torch_{s}", "framework": "torch", "side": s, "batch": tb,
         "weights": weights_paths["torch"]}
      )  # fmt: skip
  if task == "backbone" and args.sweep_batches:
    specs += [
      {**s, "key": f"{s['key']}@{b}", "batch": b}
      for s in list(specs)
      for b in args.sweep_batches
      if b != s["batch"] and "overrides" not in s
    ]
  for s in specs:
    s["check_path"] = os.path.join(tmp, f"{row}_{threads}_{s['key'].replace('/', '_')}.npy")
    s["warmup"] = 1
  return specs


def run_row(row: str, args, weights_paths, tmp: str, threads: int, cores) -> dict[str, Any]:
  specs = side_specs(row, args, weights_paths, tmp, threads, cores)
  workers: dict[str, harness.Worker] = {}
  result: dict[str, Any] = {"row": row, "sides": {}, "threads": threads}
  per_image = {s["key"]: (1 if s["task"] != "backbone" else s["batch"]) for s in specs}
  try:
    for s in specs:
      t = time.perf_counter()
      timeout = args.compile_timeout if s.get("side", "").startswith("compile") else args.timeout
      try:
        argv = harness.module_argv("bench.inference_worker", json.dumps(s))
        workers[s["key"]] = harness.Worker(argv, timeout=timeout)
        info = dict(workers[s["key"]].info)
      except (TimeoutError, RuntimeError) as e:
        info = {"error": f"not ready: {str(e)[:160]}"}
      info["ready_s"] = time.perf_counter() - t
      result["sides"][s["key"]] = {"spec": s, "info": info}
      print(f"[bench_inference] {row} {threads}t {s['key']}: {info.get('error', 'ready')} after "
            f"{info['ready_s']:.0f} s", file=sys.stderr, flush=True)  # fmt: skip
    ref = np.load(specs[0]["check_path"]) if "jax" in workers else None
    for s in specs:
      side = result["sides"][s["key"]]
      if s["key"] not in workers or ref is None:
        continue
      out = np.load(s["check_path"])
      if s["batch"] != specs[0]["batch"] and s["task"] == "backbone":  # another batch: compare common rows
        n = min(len(out), len(ref))
        out, ref_s = out[:n], ref[:n]
      else:
        ref_s = ref
      if out.shape != ref_s.shape:
        side["check"] = f"shape {out.shape} != {ref_s.shape}"
      else:
        side["rel_diff"] = float(np.max(np.abs(out - ref_s)) / max(float(np.max(np.abs(ref_s))), 1e-30))
        if not side["rel_diff"] <= TOL:
          side["check"] = f"outputs differ: max|Δ|/max|JAX| = {side['rel_diff']:.1e} > {TOL:g}"
      if "check" in side:
        workers.pop(s["key"]).close()
    if "jax" in workers:
      per_round = 1 if row in HEAVY else args.per_round
      result["per_round"] = per_round
      times = harness.interleave(workers, args.rounds, per_round=per_round)
      imgs = {k: [t / per_image[k] for t in v] for k, v in times.items()}
      for k, v in imgs.items():
        side = result["sides"][k]
        side["per_image_ms"] = 1e3 * statistics.median(v)
        per_call = result["sides"][k]["spec"]["task"] != "backbone"
        side["images_s"] = (USER_IMAGES if per_call else 1.0) / statistics.median(v)
        if k != "jax":
          side["ratio"] = harness.ratio_stats(imgs, k, "jax")
          side["ratio_summary"] = harness.ratio_summary(imgs, k, "jax")
      torch_keys = [k for k in imgs if k.startswith("torch")]
      if torch_keys:
        best = min(torch_keys, key=lambda k: statistics.median(imgs[k]))
        result["best_torch"] = best
  finally:
    for w in workers.values():
      w.close()
  return result


def fmt_row(res: dict[str, Any]) -> list[str]:
  lines = []
  row = res["row"]
  for key, side in res["sides"].items():
    s, info = side["spec"], side["info"]
    if s["framework"] == "jax":
      over = ";".join(f"{k}={v}" for k, v in (s.get("overrides") or {}).items())
      label = f"JAX jit{', ' + over if over else ''}"
      if s["backbone"] == "mobilenet_v2":
        label += f" (depthwise={info.get('depthwise', '?')}, pointwise={info.get('pointwise', '?')})"
    else:
      label = f"PyTorch {TORCH_LABEL[s['side']]}"
    if key == res.get("best_torch"):
      label += " **best PyTorch**"
    err = info.get("error") or side.get("check")
    if err:
      lines.append(f"| {row} | {s['threads']} | {label} | {s['batch']} | failed: {err} | | | |")
      continue
    ratio = "1 (reference)" if key == "jax" else side.get("ratio_summary", "n/a")
    diff = "reference" if key == "jax" else f"{side.get('rel_diff', float('nan')):.1e}"
    unit = "ms/image" if s["task"] == "backbone" else f"ms/{USER_IMAGES} images"
    per = side.get("per_image_ms", math.nan)
    lines.append(
      f"| {row} | {s['threads']} | {label} | {s['batch']} | {ratio} | {per:.2f} {unit} | "
      f"{side.get('images_s', math.nan):,.1f} | {diff} |"
    )
  return lines


def summary_line(res: dict[str, Any]) -> str:
  best = res.get("best_torch")
  row = res["row"]
  if not best:
    return f"| {row} | {res['threads']} | n/a | n/a | |"
  side = res["sides"][best]
  target = row in ("mbv2_160", "mbv2_224", "vgg_f", "extract_mbv2_160")
  met = ""
  if target and "ratio" in side:
    met = "met" if side["ratio"]["median"] >= 1.0 else "short"
  return (
    f"| {row} | {res['threads']} | {TORCH_LABEL[side['spec']['side']]} | {side['ratio_summary']} | {met} |"
  )


def stem_train_compare(size: int, batch: int, rounds: int, threads: int) -> None:
  """The MobileNetV2 train step (value and gradient of a scalar of the features w.r.t. every parameter, batch
  statistics) with the RGB stem as shifted multiply-adds (the default on CPU) against the stem as XLA's
  convolution (STEM_MAX_CHANNELS = 0, the path before issue 27), both in this process, paired rounds."""
  import jax
  import jax.numpy as jnp

  from ssdh_jax import models
  from ssdh_jax.models import depthwise

  model = models.build_backbone("mobilenet_v2")
  variables = models.init_variables(model, jax.random.key(0), size)
  x = jnp.asarray(np.random.default_rng(1).standard_normal((batch, size, size, 3), np.float32))

  def step(variables, x):
    def loss(params):
      out, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
      return out.mean()

    return jax.value_and_grad(loss)(variables["params"])

  default = depthwise.STEM_MAX_CHANNELS
  compiled, grads = {}, {}
  for name, cap in (("stem_shift", default), ("stem_conv", 0)):
    depthwise.STEM_MAX_CHANNELS = cap  # read while tracing: each program keeps its own lowering
    # a new function object per lowering: jit's trace cache is keyed on the function, not on the global
    compiled[name] = jax.jit(lambda v, x: step(v, x)).lower(variables, x).compile()
    grads[name] = jax.block_until_ready(compiled[name](variables, x))
  depthwise.STEM_MAX_CHANNELS = default
  g_new = grads["stem_shift"][1]["features_0"]["conv"]["kernel"]
  g_old = grads["stem_conv"][1]["features_0"]["conv"]["kernel"]
  rel = float(jnp.max(jnp.abs(g_new - g_old)) / jnp.max(jnp.abs(g_old)))
  sides = {k: (lambda f=f: jax.block_until_ready(f(variables, x))) for k, f in compiled.items()}
  times = harness.interleave(sides, rounds, per_round=2)
  print(f"\n## MobileNetV2 train step: RGB stem as shifted multiply-adds vs XLA's convolution ({size} px, batch "
        f"{batch}, {harness.machine_header(threads)}, jax {jax.__version__})\n")  # fmt: skip
  columns = ("t_stem_conv / t_stem_shift median (IQR; min–max), n", "stem_shift step ms",
             "stem_conv step ms", "stem kernel gradient max rel. diff")  # fmt: skip
  print(*harness.md_head(columns, "lrrl"), sep="\n")
  print(f"| {harness.ratio_summary(times, 'stem_conv', 'stem_shift')} | "
        f"{1e3 * statistics.median(times['stem_shift']):.0f} | {1e3 * statistics.median(times['stem_conv']):.0f} "
        f"| {rel:.1e} |")  # fmt: skip
  print(f"\n{harness.rounds_note(rounds, _T0)}")


_T0 = time.perf_counter()


def main(argv: list[str] | None = None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="MobileNetV2 96 px, 1 thread, eager channels_last")
  ap.add_argument("--rows", default="", help=f"comma-separated subset of {','.join(ROWS)}")
  ap.add_argument("--threads", default="", help="thread counts per side (default 1,2; quick 1)")
  ap.add_argument("--rounds", type=int, default=0, help="paired rounds per row (default 8, quick 4)")
  ap.add_argument("--per-round", type=int, default=0, help="calls per side per round, median (default 2)")
  ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile sides")
  ap.add_argument("--no-torch", action="store_true", help="JAX sides only")
  ap.add_argument("--nchw", action="store_true", help="also time PyTorch eager with contiguous NCHW")
  ap.add_argument("--rows-multi", default="", help="rows for thread counts > 1 (default: the target rows)")
  ap.add_argument("--sweep-batches", default="", help="also time every backbone side at these batches")
  ap.add_argument(
    "--jax-variants",
    default="",
    help="extra JAX sides, '|' between sides, ';' between one side's overrides: 'depthwise=conv|stem_max_channels=0'",
  )
  ap.add_argument("--timeout", type=float, default=600.0, help="seconds for a side to be ready")
  ap.add_argument("--compile-timeout", type=float, default=600.0, help="the same for torch.compile sides")
  ap.add_argument("--out", default="", help="also write the Markdown report here")
  ap.add_argument("--json", default="", help="also write the raw results as JSON here")
  ap.add_argument("--stem-train", default="", help="SIZE,BATCH: only the train-step stem comparison")
  args = ap.parse_args(argv)
  if args.stem_train:
    size, batch = (int(v) for v in args.stem_train.split(","))
    threads = int(args.threads or 1)
    harness.pin_threads(threads)
    stem_train_compare(size, batch, args.rounds or 8, threads)
    return
  t_start = time.perf_counter()
  rows = args.rows.split(",") if args.rows else (["mbv2_96"] if args.quick else list(ROWS))
  threads_list = (
    [int(t) for t in args.threads.split(",")] if args.threads else ([1] if args.quick else [1, 2])
  )
  args.rounds = args.rounds or (4 if args.quick else 8)
  args.per_round = args.per_round or (1 if args.quick else 2)
  args.jax_variants = [v for v in args.jax_variants.split("|") if v]
  args.sweep_batches = [int(b) for b in args.sweep_batches.split(",") if b]
  rows_multi = args.rows_multi.split(",") if args.rows_multi else [r for r in rows if r in MULTI_THREAD_ROWS]
  args.torch = False
  notes = []
  if args.no_torch:
    notes.append("PyTorch sides disabled (--no-torch).")
  else:
    try:
      import torch

      args.torch = True
      torch_version = torch.__version__
    except ImportError as e:
      harness.peer_missing("PyTorch", e)
      notes.append(f"PyTorch sides skipped: torch not importable ({e}).")
  import jax

  load_start = os.getloadavg()
  lines_all, summaries, raw = [], [], []
  with tempfile.TemporaryDirectory(prefix="bench_inference_") as tmp:
    prepared: dict[tuple[str, bool], dict[str, str]] = {}
    for threads in threads_list:
      cores = harness.bound_cores()[:threads] or None
      t_threads = time.perf_counter()
      for row in rows if threads == 1 else rows_multi:
        backbone, size = ROWS[row][:2]
        heads = row.startswith("encode")
        if (backbone, heads) not in prepared:
          prepared[(backbone, heads)] = prepare_weights(backbone, size, tmp, heads)
        res = run_row(row, args, prepared[(backbone, heads)], tmp, threads, cores)
        res["weights"] = prepared[(backbone, heads)]["source"]
        raw.append(res)
        lines_all += fmt_row(res)
        summaries.append(summary_line(res))
        print("\n".join(fmt_row(res)), file=sys.stderr, flush=True)
      notes.append(f"{threads} thread(s): " + harness.rounds_note(args.rounds, t_threads))
  header = [
    "# Backbone inference on the CPU: JAX (ssdh_jax) vs PyTorch at its best, paired",
    "",
    f"Output of `.venv/bin/python -m bench.bench_inference {' '.join(sys.argv[1:] if argv is None else argv)}`".rstrip()
    + f" ({time.strftime('%Y-%m-%d', time.gmtime())}).",
    "",
    f"Machine: {os.cpu_count()} cores ({harness.cpu_model()}), load average at the start "
    f"{', '.join(f'{v:.1f}' for v in load_start)}; threads per side {','.join(map(str, threads_list))} (rows "
    f"at > 1 thread: {', '.join(rows_multi) or 'none'}). jax {jax.__version__}; torch "
    f"{torch_version if args.torch else 'not installed'}. Every side is its own process bound to the first "
    f"N cores; {args.rounds} rounds, each the median of {args.per_round} call(s) per side ({', '.join(HEAVY)}: "
    "1 call), order alternating.",
    "",
    "Ratio = per-image time of the side / per-image time of JAX in the same round, median (IQR q1–q3; "
    "min–max), n: > 1 means JAX is faster. Outputs checked before timing: max|Δ|/max|JAX| ≤ "
    f"{TOL:g}. Batch = images per call of that side (extract / encode rows: eval batch of the pipeline, "
    f"{USER_IMAGES} images per call, time per call).",
    "",
    *harness.md_head(SIDE_COLUMNS, "lrlrlrrl"),
  ]
  summary = [
    "",
    "Summary, JAX against the best PyTorch side of each row (target ≥ 1.0 for mbv2_160, mbv2_224, vgg_f):",
    "",
    *harness.md_head(SUMMARY_COLUMNS, "lrlll"),
    *summaries,
    "",
    "Weights: " + "; ".join(sorted({f"{r['row']}: {r['weights']}" for r in raw})) + ".",
    *[f"- {n}" for n in notes],
    f"- wall time of this command: {time.perf_counter() - t_start:.0f} s; load average at the end "
    + ", ".join(f"{v:.1f}" for v in os.getloadavg()),
  ]
  text = "\n".join(header + lines_all + summary)
  print(text)
  if args.out:
    harness.write_text(args.out, text + "\n")
  if args.json:
    harness.write_text(args.json, json.dumps(raw, indent=1, default=str))


if __name__ == "__main__":
  main()
