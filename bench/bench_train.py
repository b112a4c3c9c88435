"""Train-step throughput of the full SSDH step, JAX (ssdh_jax.train_lib) side by side with a PyTorch port.

One timed step = uint8 batch → preprocessing → model (train mode: dropout, BatchNorm batch statistics) → the
full SSDH loss (multi_label variant, graph on the codes, all four terms) → gradients → SGD update. The JAX step
is exactly the trainer's: `train_lib.build_training` from configs/default.py (pmap over 1 device, the psum /
all_gather collectives included). The PyTorch step (bench/torch_ref.py) is the same network, the same loss and
SGD with momentum, run as fp32 eager, bf16 autocast and torch.compile (fp32, plus bf16 on CUDA). A fixed
synthetic batch (multi-hot labels, every other row labeled) is fed, so the input pipeline is not measured.
Warm-up steps (compile included) are excluded; each step is synchronised; the median of the timed steps counts.

  .venv/bin/python bench/bench_train.py [--quick] [--backbones vgg_f,mobilenet_v2] [--batch N] [--reps N]
                                        [--no-compile] [--no-torch] [--peak-tflops FP32[,BF16]]
  .venv/bin/python bench/bench_train.py --wrappers [--backbones small_cnn,mobilenet_v2] [--reps N]
      (pmap vs jit + shard_map around the same step body, alternating in one process)

CPU (no GPU visible to JAX): fp32, small batches. GPU: batch 128, fp32 and bf16 compute (config.model.dtype).
--quick: mobilenet_v2 and small_cnn only, small batches, 2 timed steps, no torch.compile of 224-px nets on
CPU. Its wall time is dominated by XLA:CPU compiling the MobileNetV2 train step (2.5–5 min on 2 busy cores).

Every measurement runs in its own subprocess (so JAX and PyTorch never share a GPU allocator, and a
torch.compile that takes too long is killed after --compile-timeout seconds and reported as skipped).
MFU = model FLOPs per step / step time / peak, with model FLOPs = 3 × XLA's cost_analysis of the train-mode
forward (XLA's count of the whole compiled step is shown too, but it counts depthwise-conv weight gradients as
dense convolutions); PyTorch rows use the JAX counts at the same batch. "loss share" = time of the jitted (or
eager / compiled, for torch) loss + gradient on outputs of the same shapes, divided by the step time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)
sys.path.insert(0, ROOT)
sys.path.insert(0, BENCH_DIR)
# JAX must not pre-allocate 75% of a GPU in the orchestrating process: the workers need it. (Workers get the
# user's setting back: JAX workers keep XLA's default pre-allocation.)
_USER_PREALLOCATE = os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

BACKBONES = ("vgg_f", "vgg16", "mobilenet_v2", "small_cnn")
QUICK = ("mobilenet_v2", "small_cnn")
IMAGE_SIZE = {"vgg_f": 224, "vgg16": 224, "mobilenet_v2": 224, "small_cnn": 32}
CPU_BATCH = {"vgg_f": 16, "vgg16": 8, "mobilenet_v2": 16, "small_cnn": 64}
QUICK_CPU_BATCH = {"vgg_f": 8, "vgg16": 4, "mobilenet_v2": 8, "small_cnn": 32}
GPU_BATCH = 128
BITS = 48
NUM_CLASSES = 21  # NUS-WIDE-21-like multi-label batch
# Dense peak TFLOP/s (SXM parts) by device-kind substring: {compute dtype: peak}.
PEAK_TFLOPS = {
  "H100": {"bfloat16": 989.0, "float32": 67.0},
  "H200": {"bfloat16": 989.0, "float32": 67.0},
  "A100": {"bfloat16": 312.0, "float32": 19.5},
}
RESULT_TAG = "BENCH_RESULT "


# ------------------------------------------------------------------------------------------------ shared


def synthetic_batch(
  batch: int, size: int, num_classes: int = NUM_CLASSES, seed: int = 0
) -> dict[str, np.ndarray]:
  """A fixed random batch: uint8 images (B,size,size,3), 1–3 labels per row, every other row labeled.

  Returns:
    dict image uint8 (B,H,W,3), labels float32 (B,C) (zeros on unlabeled rows), labeled bool (B,).
  """
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
  labels = np.zeros((batch, num_classes), np.float32)
  for i in range(batch):
    labels[i, rng.choice(num_classes, size=rng.integers(1, 4), replace=False)] = 1.0
  labeled = np.arange(batch) % 2 == 0
  labels[~labeled] = 0.0
  return {"image": images, "labels": labels, "labeled": labeled}


def make_config(backbone: str, batch: int, dtype: str):
  """configs/default.py with the bench's overrides (1 device, pmap, full multi-label SSDH loss)."""
  from configs.default import get_config
  from ssdh_jax import preprocessing

  c = get_config()
  c.model.name = backbone
  c.model.bits = BITS
  c.model.num_classes = NUM_CLASSES
  c.model.dtype = dtype
  c.model.preprocess = preprocessing.default_preprocess(backbone)
  c.data.image_size = IMAGE_SIZE[backbone]
  c.data.num_classes = NUM_CLASSES
  c.data.multi_label = True
  c.data.on_device_augment = False
  c.train.batch_size = batch
  c.train.parallel = "pmap"
  c.train.num_devices = 1
  c.loss.name = "ssdh"
  c.loss.variant = "multi_label"
  c.loss.graph_feature = "codes"
  return c


def _median_step(fn, warmup: int, reps: int) -> tuple[float, float]:
  """(first call seconds, median seconds of `reps` calls after `warmup` untimed ones); fn() must synchronise."""
  t = time.perf_counter()
  fn()
  first = time.perf_counter() - t
  for _ in range(max(0, warmup - 1)):
    fn()
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return first, statistics.median(times)


# ------------------------------------------------------------------------------------------------ JAX worker


def _jax_loss_ms(cfg, outputs_shape: dict[str, tuple], reps: int) -> tuple[float, str]:
  """Median ms of the jitted SSDH loss + gradient w.r.t. the outputs at this batch (bench_loss.time_loss)."""
  n, k = outputs_shape["codes"]
  try:
    from bench_loss import time_loss

    r = time_loss(n, k, reps=reps, loss_cfg=cfg.loss, num_classes=cfg.model.num_classes)
    return float(r["step_ms"]), "bench_loss.time_loss"
  except (ImportError, TypeError, KeyError):
    pass
  import jax
  import jax.numpy as jnp

  from ssdh_jax import losses

  b = synthetic_batch(n, 1, cfg.model.num_classes)
  rng = np.random.default_rng(1)
  outputs = {
    "codes": jnp.asarray(1 / (1 + np.exp(-rng.normal(size=(n, k)))), jnp.float32),
    "class_logits": jnp.asarray(rng.normal(size=(n, cfg.model.num_classes)), jnp.float32),
  }
  fn = losses.get_loss(cfg.loss.name)
  step = jax.jit(jax.value_and_grad(lambda o, key: fn(o, b["labels"], b["labeled"], key, cfg.loss)[0]))
  key = jax.random.PRNGKey(0)
  _, med = _median_step(lambda: jax.block_until_ready(step(outputs, key)), 1, reps)
  return 1e3 * med, "ssdh_jax.losses"


def _cost_flops(obj) -> float | None:
  cost = obj.cost_analysis()
  cost = cost[0] if isinstance(cost, list | tuple) else cost
  if not cost:
    return None
  return float(cost.get("flops", 0.0)) or None


def _forward_flops(model, state, batch: int, size: int) -> float | None:
  """XLA's FLOP count of one train-mode forward pass of the batch (lowered, not compiled)."""
  import jax
  import jax.numpy as jnp

  variables = {"params": state.params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
  fwd = jax.jit(
    lambda v, x: model.apply(
      v, x, train=True, rngs={"dropout": jax.random.PRNGKey(0)}, mutable=["batch_stats"]
    )
  )
  try:
    return _cost_flops(fwd.lower(variables, x))
  except Exception:
    return None


def run_jax(spec: dict[str, Any]) -> dict[str, Any]:
  import jax

  from ssdh_jax import mesh, train_lib

  cfg = make_config(spec["backbone"], spec["batch"], spec["dtype"])
  dm = mesh.create("pmap", 1)
  model, tx, _, step_fn = train_lib.build_training(cfg, dm)
  state = train_lib.create_train_state(cfg, model, tx, jax.random.PRNGKey(cfg.seed))
  batch = synthetic_batch(spec["batch"], IMAGE_SIZE[spec["backbone"]])
  fwd_flops = _forward_flops(model, state, spec["batch"], IMAGE_SIZE[spec["backbone"]])
  pstate = dm.replicate(state)
  pbatch = dm.shard_batch(batch)
  del state

  t = time.perf_counter()
  flops, note = None, ""
  try:
    compiled = step_fn.lower(pstate, pbatch).compile()
    try:
      flops = _cost_flops(compiled)
    except Exception as e:
      note = f"no cost_analysis ({type(e).__name__})"
  except Exception as e:
    compiled, note = step_fn, f"AOT lower failed ({type(e).__name__}); timed via pmap"
  compile_s = time.perf_counter() - t

  holder = {"state": pstate, "metrics": None}

  def one_step():
    holder["state"], holder["metrics"] = compiled(holder["state"], pbatch)
    jax.block_until_ready((holder["state"], holder["metrics"]))

  first, med = _median_step(one_step, spec["warmup"], spec["reps"])
  metrics = jax.device_get(holder["metrics"])
  loss = float(np.asarray(metrics["loss"]).reshape(-1)[0])
  finite = float(np.asarray(metrics["finite"]).reshape(-1)[0])
  loss_ms, loss_src = _jax_loss_ms(cfg, {"codes": (spec["batch"], BITS)}, spec["loss_reps"])
  return {
    "step_s": med,
    "compile_s": compile_s + (first if compiled is step_fn else 0.0),
    "flops": flops,
    "model_flops": 3.0 * fwd_flops if fwd_flops else None,
    "loss_ms": loss_ms,
    "loss_src": loss_src,
    "loss": loss,
    "finite": finite,
    "note": note,
    "device_kind": dm.local_devices[0].device_kind,
  }


# ------------------------------------------------------------------------------------------------ torch worker


def _torch_loss_fn(loss_cfg: dict):
  import torch_ref

  return lambda out, labels, labeled: torch_ref.ssdh_loss(out, labels, labeled, loss_cfg)[0]


def run_torch(spec: dict[str, Any]) -> dict[str, Any]:
  import torch
  import torch_ref

  dev = torch.device(spec["device"])
  torch.manual_seed(0)
  if dev.type == "cuda":
    torch.backends.cudnn.benchmark = True
    # JAX's default fp32 precision on Ampere+ lets convolutions and matmuls use TF32; do the same here.
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
  else:
    torch.set_num_threads(os.cpu_count() or 1)
  bf16 = spec["dtype"] == "bfloat16"
  compile_ = spec["mode"] == "compile"
  loss_cfg = spec["loss_cfg"]
  name = spec["backbone"]
  pre = {"vgg_f": "caffe_bgr", "small_cnn": "unit"}.get(name, "imagenet")
  model = torch_ref.build_model(name, BITS, NUM_CLASSES).to(dev, memory_format=torch.channels_last)
  model.train()
  opt = torch_ref.make_optimizer(model)
  b = synthetic_batch(spec["batch"], IMAGE_SIZE[name])
  images = torch.from_numpy(b["image"]).to(dev)
  labels = torch.from_numpy(b["labels"]).to(dev)
  labeled = torch.from_numpy(b["labeled"]).to(dev)
  loss_of = _torch_loss_fn(loss_cfg)

  def forward_loss(images, labels, labeled):
    x = torch_ref.preprocess(images, pre)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
      out = model(x)
    return loss_of(out, labels, labeled)

  if compile_:
    forward_loss = torch.compile(forward_loss)
  sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
  holder = {}

  def one_step():
    opt.zero_grad(set_to_none=True)
    loss = forward_loss(images, labels, labeled)
    loss.backward()
    opt.step()
    holder["loss"] = loss.detach()
    sync()

  first, med = _median_step(one_step, spec["warmup"], spec["reps"])
  loss = float(holder["loss"])
  counted = None
  if not compile_ and not bf16:  # an independent FLOP count (convs + matmuls, forward + backward)
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
      one_step()
    counted = float(counter.get_total_flops())

  # Loss + backward alone on outputs of the same shapes, in the step's mode.
  g = torch.Generator().manual_seed(1)
  n = spec["batch"]
  codes = torch.sigmoid(torch.randn(n, BITS, generator=g)).to(dev).requires_grad_()
  logits = torch.randn(n, NUM_CLASSES, generator=g).to(dev).requires_grad_()
  loss_only = loss_of
  if compile_:
    loss_only = torch.compile(loss_of)

  def one_loss():
    val = loss_only({"codes": codes, "class_logits": logits}, labels, labeled)
    val.backward()
    sync()

  _, loss_med = _median_step(one_loss, 2, spec["loss_reps"])
  return {
    "step_s": med,
    "compile_s": first if compile_ else None,
    "torch_flops": counted,
    "loss_ms": 1e3 * loss_med,
    "loss": loss,
    "finite": float(np.isfinite(loss)),
    "note": "",
    "device_kind": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
  }


def worker_main(spec_json: str) -> None:
  spec = json.loads(spec_json)
  fn = run_jax if spec["framework"] == "jax" else run_torch
  print(RESULT_TAG + json.dumps(fn(spec)), flush=True)


# ------------------------------------------------------------------------------------------------ orchestration


def run_worker(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
  """Runs one measurement in a fresh interpreter (own process group, killed on timeout)."""
  env = dict(os.environ)
  if _USER_PREALLOCATE is None and spec["framework"] == "jax":
    env.pop("XLA_PYTHON_CLIENT_PREALLOCATE", None)
  env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")  # no inductor worker pool: one process group to kill
  cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
  t = time.perf_counter()
  proc = subprocess.Popen(
    cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
  )
  try:
    out, err = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    print(
      f"[bench_train] {spec['framework']} {spec['backbone']}: killed after {timeout:.0f} s", file=sys.stderr
    )
    return {"error": f"skipped: did not finish in {timeout:.0f} s (compile + {spec['reps']} steps)"}
  wall = time.perf_counter() - t
  label = (
    f"{spec['framework']} {spec['backbone']} {spec.get('mode', 'jit')} {spec['dtype']} batch {spec['batch']}"
  )
  print(f"[bench_train] {label}: {wall:.0f} s", file=sys.stderr, flush=True)
  for line in out.splitlines()[::-1]:
    if line.startswith(RESULT_TAG):
      res = json.loads(line[len(RESULT_TAG) :])
      res["wall_s"] = wall
      return res
  tail = [ln for ln in err.strip().splitlines() if ln.strip()][-1:] or ["no output"]
  return {"error": f"failed (exit {proc.returncode}): {tail[0][:200]}"}


def sanity_check(loss_cfg, n: int = 32, k: int = BITS, c: int = 10, tol: float = 1e-4) -> str:
  """ssdh_jax vs torch_ref on CPU: same random words → same sampled indices; same indices → same loss/grads."""
  import jax
  import jax.numpy as jnp
  import torch
  import torch_ref

  from ssdh_jax import graph, losses

  cpu = jax.devices("cpu")[0]
  rng = np.random.default_rng(3)
  b = synthetic_batch(n, 1, c, seed=3)
  codes = (1 / (1 + np.exp(-rng.normal(size=(n, k))))).astype(np.float32)
  logits = rng.normal(size=(n, c)).astype(np.float32)
  tries = max(1, int(loss_cfg.max_tries))
  with jax.default_device(cpu):
    key = jax.random.PRNGKey(7)
    out_j = {"codes": jnp.asarray(codes), "class_logits": jnp.asarray(logits)}
    sample = jax.jit(lambda o, y, m, kk: losses.ssdh_sample(o, y, m, kk, loss_cfg))
    s_j = {kk: np.array(v) for kk, v in jax.device_get(sample(out_j, b["labels"], b["labeled"], key)).items()}
    bits = np.asarray(graph.anchor_bits(key, jnp.arange(n, dtype=jnp.int32), 4 + 2 * tries)).astype(np.int64)

    def jl(o):
      return losses.ssdh_terms(o, b["labels"], b["labeled"], s_j, loss_cfg)

    (loss_j, aux_j), grad_j = jax.jit(jax.value_and_grad(jl, has_aux=True))(out_j)
  cfg_t = loss_cfg.to_dict()
  lab_t, msk_t = torch.from_numpy(b["labels"]), torch.from_numpy(b["labeled"])
  out_t = {
    "codes": torch.from_numpy(codes).requires_grad_(),
    "class_logits": torch.from_numpy(logits).requires_grad_(),
  }
  s_t = torch_ref.ssdh_sample(out_t, lab_t, msk_t, cfg_t, bits=torch.from_numpy(bits))
  idx_keys = [kk for kk in s_j if kk != "anchors"]
  same = sum(bool(np.array_equal(np.asarray(s_j[kk]), s_t[kk].numpy())) for kk in idx_keys)
  loss_t, aux_t = torch_ref.ssdh_terms(
    out_t, lab_t, msk_t, {kk: torch.from_numpy(v) for kk, v in s_j.items()}, cfg_t
  )
  loss_t.backward()
  d_loss = max(
    abs(float(loss_j) - loss_t.item()),
    *(abs(float(aux_j[t]) - aux_t[t].item()) for t in ("loss_rank", "loss_emb", "loss_pl", "loss_cls")),
  )
  grad_t = {
    kk: np.zeros_like(v) if out_t[kk].grad is None else out_t[kk].grad.numpy() for kk, v in grad_j.items()
  }
  d_grad = max(float(np.max(np.abs(np.asarray(grad_j[kk]) - grad_t[kk]))) for kk in grad_j)
  ok = same == len(idx_keys) and d_loss <= tol and d_grad <= tol
  return (
    f"{'PASS' if ok else 'FAIL'}: with ssdh_jax's random words torch_ref samples {same}/{len(idx_keys)} index "
    f"arrays identically (N={n}); with the same indices loss/term max |Δ| = {d_loss:.1e}, output-gradient "
    f"max |Δ| = {d_grad:.1e} (tol {tol:g})"
  )


def _peak(kind: str, dtype: str, override: list[float] | None) -> float | None:
  if override:
    return override[1 if dtype == "bfloat16" and len(override) > 1 else 0]
  for sub, peaks in PEAK_TFLOPS.items():
    if sub in kind:
      return peaks[dtype]
  return None


def compare_wrappers(backbone: str, batch: int, reps: int, num_devices: int = 1) -> dict[str, Any]:
  """pmap vs jit + shard_map around the same train step body, in this process: compile time of each, then
  `reps` rounds alternating one step of each. Returns compile seconds, the per-round ratio
  t(shard_map) / t(pmap) (median, min, max) and both median step times."""
  import jax

  from ssdh_jax import mesh, train_lib

  cfg = make_config(backbone, batch, "float32")
  b = synthetic_batch(batch, IMAGE_SIZE[backbone])
  runs = {}
  for mode in mesh.MODES:
    dm = mesh.create(mode, num_devices)
    model, tx, _, step_fn = train_lib.build_training(cfg, dm)
    state = dm.replicate(train_lib.create_train_state(cfg, model, tx, jax.random.PRNGKey(cfg.seed)))
    placed = dm.shard_batch(b)
    t = time.perf_counter()
    state, m = step_fn(state, placed)
    jax.block_until_ready((state, m))
    runs[mode] = {
      "fn": step_fn,
      "state": state,
      "batch": placed,
      "compile_s": time.perf_counter() - t,
      "t": [],
    }
  for _ in range(reps):
    for mode in mesh.MODES:  # alternate: both see the same load
      r = runs[mode]
      t = time.perf_counter()
      r["state"], m = r["fn"](r["state"], r["batch"])
      jax.block_until_ready((r["state"], m))
      r["t"].append(time.perf_counter() - t)
  ratios = [a / b for a, b in zip(runs["shard_map"]["t"], runs["pmap"]["t"])]
  return {
    "backbone": backbone,
    "batch": batch,
    "devices": num_devices,
    "compile_s": {m: runs[m]["compile_s"] for m in mesh.MODES},
    "step_s": {m: statistics.median(runs[m]["t"]) for m in mesh.MODES},
    "ratio": (statistics.median(ratios), min(ratios), max(ratios)),
  }


def wrappers_main(names: list[str], batch: int, reps: int) -> None:
  import jax

  print(
    f"\n## Train step: jit + shard_map vs pmap (same body), {jax.default_backend()}, "
    f"{os.cpu_count()} CPU threads, load average {os.getloadavg()[0]:.1f}; {reps} alternating rounds\n"
  )
  print("| backbone | batch | pmap step ms | shard_map step ms | ratio shard_map/pmap, median (min–max) | "
        "compile s pmap / shard_map |")  # fmt: skip
  print("|---|---|---|---|---|---|")
  for name in names:
    bsz = batch or QUICK_CPU_BATCH[name]
    r = compare_wrappers(name, bsz, reps)
    med, lo, hi = r["ratio"]
    print(
      f"| {name} | {bsz} | {1e3 * r['step_s']['pmap']:.1f} | {1e3 * r['step_s']['shard_map']:.1f} | "
      f"{med:.3f} ({lo:.3f}–{hi:.3f}) | {r['compile_s']['pmap']:.1f} / {r['compile_s']['shard_map']:.1f} |"
    )


def main(argv: list[str] | None = None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="mobilenet_v2 + small_cnn, small batches, few reps")
  ap.add_argument("--backbones", default="", help=f"comma-separated subset of {','.join(BACKBONES)}")
  ap.add_argument(
    "--batch", type=int, default=0, help="batch for every backbone (default: per device/backbone)"
  )
  ap.add_argument("--reps", type=int, default=0, help="timed steps per row (default 2 quick, 5 CPU, 20 GPU)")
  ap.add_argument(
    "--warmup", type=int, default=0, help="untimed steps first, compile included (default 1 quick, 2)"
  )
  ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
  ap.add_argument("--no-torch", action="store_true", help="JAX rows only")
  ap.add_argument("--timeout", type=float, default=900.0, help="seconds per JAX / eager measurement")
  ap.add_argument(
    "--compile-timeout",
    type=float,
    default=0.0,
    help="seconds per torch.compile row (default 120 CPU quick, 600 else)",
  )
  ap.add_argument(
    "--peak-tflops", default="", help="peak TFLOP/s for MFU: FP32[,BF16] (default by device kind)"
  )
  ap.add_argument(
    "--wrappers", action="store_true", help="only pmap vs jit+shard_map around the same step, paired"
  )
  ap.add_argument("--worker", default="", help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.worker:
    worker_main(args.worker)
    return
  if args.wrappers:
    names = args.backbones.split(",") if args.backbones else ["small_cnn"]
    wrappers_main(names, args.batch, args.reps or 16)
    return

  import jax

  from configs.default import get_config

  gpu = jax.default_backend() == "gpu"
  names = args.backbones.split(",") if args.backbones else list(QUICK if args.quick else BACKBONES)
  reps = args.reps or (2 if args.quick else (20 if gpu else 5))
  warmup = args.warmup or (1 if args.quick else 2)
  loss_reps = 3 if args.quick else 20
  dtypes = ("float32", "bfloat16") if gpu else ("float32",)
  peak_override = [float(v) for v in args.peak_tflops.split(",")] if args.peak_tflops else None
  compile_timeout = args.compile_timeout or (120.0 if args.quick and not gpu else 600.0)
  loss_cfg = get_config().loss
  notes: list[str] = []

  # PyTorch availability and device.
  torch_dev, torch_ver, bf16_cpu = None, None, False
  if args.no_torch:
    notes.append("PyTorch rows disabled (--no-torch).")
  else:
    try:
      import torch

      torch_ver = torch.__version__
      if gpu and torch.cuda.is_available():
        torch_dev = "cuda"
      elif gpu:
        notes.append(
          f"torch {torch_ver} has no CUDA here: PyTorch rows skipped (a CPU wheel next to GPU JAX)."
        )
      else:
        torch_dev = "cpu"
        bf16_cpu = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except ImportError:
      notes.append("PyTorch is not installed: JAX rows only (`pip install torch` adds the PyTorch rows).")

  sanity = None
  if torch_dev is not None:
    try:
      sanity = sanity_check(loss_cfg)
    except Exception as e:
      sanity = f"not run: {type(e).__name__}: {e}"

  rows: list[dict[str, Any]] = []
  for name in names:
    if gpu:
      batch = args.batch or GPU_BATCH
    else:
      batch = args.batch or (QUICK_CPU_BATCH if args.quick else CPU_BATCH)[name]
    common = {"backbone": name, "batch": batch, "warmup": warmup, "reps": reps, "loss_reps": loss_reps}
    for dtype in dtypes:
      spec = {**common, "framework": "jax", "dtype": dtype}
      rows.append({**spec, "config": "jit (pmap, 1 device)", **run_worker(spec, args.timeout)})
    if torch_dev is None:
      continue
    torch_cfgs = [("eager", "float32", "eager fp32")]
    if torch_dev == "cuda" or bf16_cpu:
      torch_cfgs.append(("eager", "bfloat16", "eager + bf16 autocast"))
    if args.quick and torch_dev == "cpu" and IMAGE_SIZE[name] > 64:
      notes.append(
        f"{name}: torch.compile skipped in --quick on CPU (inductor takes minutes on a 224-px net)."
      )
    elif not args.no_compile:
      torch_cfgs.append(("compile", "float32", "torch.compile fp32"))
      if torch_dev == "cuda":
        torch_cfgs.append(("compile", "bfloat16", "torch.compile + bf16 autocast"))
    for mode, dtype, label in torch_cfgs:
      spec = {**common, "framework": "torch", "dtype": dtype, "mode": mode, "device": torch_dev}
      spec["loss_cfg"] = {**loss_cfg.to_dict(), "neg_window": list(loss_cfg.neg_window)}
      timeout = compile_timeout if mode == "compile" else args.timeout
      rows.append({**spec, "config": label, **run_worker(spec, timeout)})

  # Derived columns.
  device_kind = (
    jax.devices()[0].device_kind
    if gpu
    else f"CPU ({os.cpu_count()} cores, {platform.processor() or 'x86_64'})"
  )
  for r in rows:
    if "error" in r:
      continue
    r["images_s"] = r["batch"] / r["step_s"]
    # PyTorch rows take the JAX counts of the same backbone (same dtype where there is one).
    same_jax = [
      x for x in rows if x["framework"] == "jax" and x["backbone"] == r["backbone"] and "error" not in x
    ]
    same_jax = [x for x in same_jax if x["dtype"] == r["dtype"]] or same_jax
    for key in ("flops", "model_flops"):
      if r.get(key) is None and same_jax:
        r[key] = same_jax[0].get(key)
    flops = r.get("model_flops")
    peak = _peak(device_kind if gpu else "", r["dtype"], peak_override)
    r["mfu"] = flops / r["step_s"] / (peak * 1e12) if flops and peak else None
    r["loss_share"] = r["loss_ms"] / (1e3 * r["step_s"]) if r.get("loss_ms") else None
  for name in names:
    best = max(
      (
        r["images_s"] for r in rows if r["backbone"] == name and r["framework"] == "torch" and "images_s" in r
      ),
      default=None,
    )
    for r in rows:
      if r["backbone"] == name and "images_s" in r:
        r["ratio"] = r["images_s"] / best if best else None

  # Report.
  import jaxlib

  print(f"\n## SSDH train step: JAX vs PyTorch ({device_kind})\n")
  print(
    f"jax {jax.__version__} / jaxlib {jaxlib.__version__}; torch {torch_ver or 'not installed'}; "
    f"loss: ssdh multi_label, graph on codes, k={BITS}, C={NUM_CLASSES}, half the batch labeled; "
    f"median of {reps} steps after {warmup} warm-up; load average at the end: "
    f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}.\n"
  )
  print(
    "| backbone | framework / config | batch | dtype | images/s | × best PyTorch | step ms | compile s | "
    "model GFLOP/step | XLA step GFLOP | MFU | loss share |"
  )
  print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
  fmt = lambda v, f: "n/a" if v is None else format(v, f)
  for r in rows:
    frame = "JAX" if r["framework"] == "jax" else "PyTorch"
    head = f"| {r['backbone']} | {frame} {r['config']} | {r['batch']} | {r['dtype']} |"
    if "error" in r:
      print(f"{head} {r['error']} | | | | | | | |")
      continue
    print(
      f"{head} {r['images_s']:,.1f} | {fmt(r.get('ratio'), '.2f')} | {1e3 * r['step_s']:.1f} | "
      f"{fmt(r.get('compile_s'), '.1f')} | {fmt(r['model_flops'] and r['model_flops'] / 1e9, ',.1f')} | "
      f"{fmt(r['flops'] and r['flops'] / 1e9, ',.1f')} | "
      f"{fmt(r['mfu'] and 100 * r['mfu'], '.1f') + ('%' if r['mfu'] else '')} | "
      f"{fmt(r['loss_share'] and 100 * r['loss_share'], '.1f') + ('%' if r['loss_share'] else '')} |"
    )
    if r.get("finite", 1.0) < 1.0:
      notes.append(
        f"{r['backbone']} {frame} {r['config']}: non-finite loss/gradients on the synthetic batch."
      )
    if r.get("note"):
      notes.append(f"{r['backbone']} {frame} {r['config']}: {r['note']}")
  print()
  if sanity:
    print(f"- Numeric sanity (CPU, JAX loss vs torch_ref loss): {sanity}")
  if not gpu:
    peak_txt = "given by --peak-tflops" if peak_override else "n/a on CPU unless --peak-tflops is given"
    print(f"- No GPU visible to JAX: CPU rows only, fp32 JAX. MFU: {peak_txt}.")
    print("- CPU timings are noisy when other processes share the cores (see the load average above).")
  else:
    print("- MFU peaks (dense): H100/H200 989 bf16 / 67 fp32, A100 312 / 19.5 TFLOP/s, or --peak-tflops.")
    print("- fp32 rows: JAX's default precision and torch (TF32 enabled here) may use TF32 on Ampere+.")
  print(
    "- model GFLOP/step = 3 × XLA's count of the train-mode forward (the MFU numerator); XLA step GFLOP = "
    "cost_analysis of the whole compiled step (forward, backward, loss, update), which counts a grouped "
    "(depthwise) convolution's weight gradient as a dense one and so overstates MobileNetV2 several-fold."
  )
  for name in names:
    cnt = [r["torch_flops"] for r in rows if r["backbone"] == name and r.get("torch_flops")]
    if cnt:
      print(
        f"- {name}: torch FlopCounterMode counts {cnt[0] / 1e9:,.1f} GFLOP for one eager fp32 step"
        + (
          " (convs + matmuls; it also counts depthwise backward as dense)." if name == "mobilenet_v2" else "."
        )
      )
  loss_srcs = sorted({r["loss_src"] for r in rows if r.get("loss_src")})
  if loss_srcs:
    print(f"- JAX loss share from {', '.join(loss_srcs)} (loss + grad w.r.t. the outputs, same N, k, C).")
  print(
    "- × best PyTorch: images/s over the fastest PyTorch row of the same backbone; PyTorch rows use the JAX "
    "FLOP counts. compile s: AOT compile of the step (JAX) / first step (torch.compile)."
  )
  for n in notes:
    print(f"- {n}")


if __name__ == "__main__":
  main()
