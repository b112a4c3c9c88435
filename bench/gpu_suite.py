"""The GPU suite (issue 15): the measurements that need an accelerator, in one command of about 8 minutes.

Sections, each recorded in one JSON file and one Markdown file (a section that cannot run is recorded as
skipped, with the reason; one that breaks, as failed):
  metric   mAP@5000 at 2,100 queries × 193,734 items × 48 bits, 21 multi-hot labels, random codes (the inputs
           of bench/bench_metrics.py): `ssdh_jax.metrics.mean_average_precision`, warm call (median of 3),
           compile time separately, at query_chunk 256 (the default) and 4096; checked against the NumPy
           stable-argsort evaluator on the first 20 queries.
  train    the SSDH train step of VGG-F, VGG-16 and MobileNetV2 (bf16 compute, batch 128, 224-px crops + flips
           made on the device from 256-px uint8 images) against PyTorch eager bf16 autocast (channels_last and
           contiguous) and torch.compile (channels_last), paired and interleaved: bench_train's persistent
           workers (bench/train_sides.py, bench/harness.py), all started and warmed up first, then timed in
           alternating rounds per backbone.
  quality  a short SSDH run of MobileNetV2 (`train_lib.train_and_evaluate`, configs/cifar10_mobilenet_v2.py,
           a few hundred steps) on CIFAR-10 when the archive is there (../shared/data, shared/data or
           .carry/data), else on the digits data (scikit-learn, or .carry/data/digits.npz); ImageNet weights when
           carried (.carry/weights/mobilenet_v2-*.pth or the installed weight package), else from scratch.

  bash bench/gpu_suite.sh [--dry-run] [--out DIR] [--budget-s 480] [--only metric,train,quality]
  python -m bench.gpu_suite ...                       (the same, without the wheel installation step)

--dry-run: the whole suite on CPU at tiny sizes in about 2 minutes, every code path: small_cnn stands in for
the three networks (batch 4, 16-px crops of 20-px images, bf16), 4 rounds, torch.compile with the aot_eager
backend (no inductor code generation), mAP@500 over 5,000 items, a 10-step small_cnn run on digits (batch
32). The sections overlap in a dry run (nothing is measured there).
PyTorch rows run when torch imports, else they are recorded as skipped with the reason.
Output: $OUT if set, else bench/results/gpu_suite (gpu_suite.json, gpu_suite.md).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import glob
import importlib
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any

from bench import harness
from bench.harness import ROOT

BENCH_DIR = os.path.join(ROOT, "bench")

SECTIONS = ("metric", "train", "quality")
ARCHIVE_NAME = "cifar10-jpeg.tar.xz"
CARRY = os.environ.get("GPU_SUITE_CARRY", os.path.join(ROOT, ".carry"))

FULL: dict[str, Any] = {
  "budget_s": 480.0,
  "train": {
    "backbones": ["vgg_f", "vgg16", "mobilenet_v2"],
    "dtype": "bfloat16",
    "batch": 128,
    "image_size": 224,
    "stored_size": 256,
    "rounds": 10,
    "per_round": 5,
    "warmup": 5,
    "loss_reps": 10,
    "compile_backend": "inductor",
    "timeout": 300.0,
    "compile_timeout": 300.0,
    "warm_all_first": True,
    "parallel_warmup": True,
    "timing_reserve_s": 75.0,  # every side must be ready this long before the train deadline
  },
  "metric": {
    "n_q": 2100,
    "n_db": 193_734,
    "R": 5000,
    "bits": 48,
    "chunks": [256, 4096],
    "reps": 3,
    "check": 20,
  },
  "quality": {"steps": 300, "backbone": "mobilenet_v2", "bits": 48, "data": "auto", "reserve_s": 170.0},
}
DRY: dict[str, Any] = {
  "budget_s": 300.0,
  "train": {
    "backbones": ["small_cnn"],
    "dtype": "bfloat16",
    "batch": 4,
    "image_size": 16,
    "stored_size": 20,
    "rounds": 4,
    "per_round": 1,
    "warmup": 1,
    "loss_reps": 1,
    "compile_backend": "aot_eager",
    "timeout": 240.0,
    "compile_timeout": 240.0,
    "warm_all_first": False,
    "parallel_warmup": True,
    "timing_reserve_s": 20.0,
  },
  "metric": {"n_q": 64, "n_db": 5000, "R": 500, "bits": 48, "chunks": [64], "reps": 2, "check": 8},
  "quality": {
    "steps": 10,
    "batch": 32,
    "backbone": "small_cnn",
    "bits": 48,
    "data": "digits",
    "reserve_s": 120.0,
  },
}
PACKAGES = (
  "jax",
  "jaxlib",
  "flax",
  "optax",
  "orbax-checkpoint",
  "numpy",
  "torch",
  "ml_collections",
  "tqdm",
  "pillow",
  "matplotlib",
  "scikit-learn",
  "tensorboardX",
)


def have(module: str) -> bool:
  """Whether `module` imports (not merely whether it is found: a broken install counts as missing)."""
  try:
    importlib.import_module(module)
    return True
  except Exception:
    return False


def versions() -> dict[str, str]:
  out = {}
  for name in PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = "missing"
  return out


# ------------------------------------------------------------------------------------------------ metric


def random_codes(rng, n: int, bits: int):
  """Packed uint32 codes, as bench/bench_metrics.py builds them (bits beyond `bits` zero)."""
  import numpy as np

  words = rng.integers(0, 2**32, (n, (bits + 31) // 32), dtype=np.uint32)
  if bits % 32:
    words[:, -1] &= np.uint32((1 << (bits % 32)) - 1)
  return words


def random_labels(rng, n: int, c: int = 21):
  """Multi-hot labels as bench/bench_metrics.py: each concept with p = 0.1, and at least one per row."""
  import numpy as np

  y = rng.random((n, c)) < 0.1
  y[np.arange(n), rng.integers(0, c, n)] = True
  return y.astype(np.float32)


def numpy_map(qw, dw, ql, dl, bits: int, R: int) -> float:
  """The zoo evaluator with a stable argsort (ties by database index): the reference for the check."""
  import numpy as np

  def pm1(w):
    b = np.unpackbits(w.view(np.uint8), axis=1, bitorder="little")[:, :bits]
    return b.astype(np.float32) * 2 - 1

  qb, db = pm1(qw), pm1(dw)
  aps = []
  for i in range(len(qb)):
    ham = 0.5 * (bits - db @ qb[i])
    gnd = (dl @ ql[i] > 0)[np.argsort(ham, kind="stable")][:R]
    hits = np.cumsum(gnd)
    aps.append(np.sum(gnd * hits / np.arange(1, R + 1)) / hits[-1] if hits[-1] else 0.0)
  return float(np.mean(aps))


def section_metric(p: dict[str, Any]) -> dict[str, Any]:
  import jax
  import numpy as np

  from ssdh_jax import metrics

  rng = np.random.default_rng(0)
  bits, R = int(p["bits"]), int(p["R"])
  qw, dw = random_codes(rng, p["n_q"], bits), random_codes(rng, p["n_db"], bits)
  ql, dl = random_labels(rng, p["n_q"]), random_labels(rng, p["n_db"])
  dev = jax.devices()[0]
  qj, dj = jax.device_put(qw, dev), jax.device_put(dw, dev)
  rows = []
  for chunk in p["chunks"]:
    run = lambda chunk=chunk: metrics.mean_average_precision(
      qj, dj, ql, dl, bits=bits, R=R, query_chunk=chunk
    )
    t = time.perf_counter()
    first_map = run()
    first = time.perf_counter() - t
    warm = []
    for _ in range(int(p["reps"])):
      t = time.perf_counter()
      m = run()
      warm.append(time.perf_counter() - t)
    warm.sort()
    med = warm[len(warm) // 2]
    rows.append({
      "method": "ssdh_jax.metrics.mean_average_precision",
      "query_chunk": chunk,
      "warm_s": med,
      "warm_all_s": warm,
      "first_s": first,
      "compile_s": max(first - med, 0.0),
      "map": m,
      "same_as_first_call": bool(m == first_map),
    })  # fmt: skip
  k = int(p["check"])
  ours = metrics.mean_average_precision(qj[:k], dj, ql[:k], dl, bits=bits, R=R)
  ref = numpy_map(qw[:k], dw, ql[:k], dl, bits, R)
  return {
    "status": "ok",
    "task": f"mAP@{R}, {p['n_q']:,} queries × {p['n_db']:,} items, {bits} bits, 21 labels, random codes",
    "device": f"{dev.platform} ({dev.device_kind})",
    "rows": rows,
    "check": {"queries": k, "ssdh_jax": ours, "numpy_stable": ref, "abs_diff": abs(ours - ref)},
  }


# ------------------------------------------------------------------------------------------------ quality


def _shim_missing(notes: list[str]) -> None:
  """The quality run needs tqdm (progress bars) and matplotlib (the report's PNG curves) only for output a
  run directory shows; when the image lacks them, stand-ins keep the numbers coming (and say so)."""
  if not have("tqdm"):
    import types

    class _Bar:
      n = 0

      def __init__(self, *a, **k):
        self.n = int(k.get("initial", 0))

      def update(self, k=1):
        self.n += k

      def __enter__(self):
        return self

      def __exit__(self, *exc):
        return False

      def __getattr__(self, name):
        return lambda *a, **k: None

    mod, auto = types.ModuleType("tqdm"), types.ModuleType("tqdm.auto")
    mod.tqdm = auto.tqdm = _Bar
    mod.auto = auto
    sys.modules["tqdm"], sys.modules["tqdm.auto"] = mod, auto
    notes.append("tqdm is not installed: progress bars replaced by a no-op (carry its wheel to get them).")
  if not have("matplotlib"):
    from ssdh_jax import evaluate

    evaluate.write_plots = lambda *a, **k: []
    notes.append("matplotlib is not installed: the run's PNG curves were not drawn (numbers unaffected).")


def find_archive() -> str:
  for cand in (
    os.environ.get("GPU_SUITE_CIFAR", ""),
    os.path.join(ROOT, "..", "shared", "data", ARCHIVE_NAME),
    os.path.join(ROOT, "shared", "data", ARCHIVE_NAME),
    os.path.join(CARRY, "data", ARCHIVE_NAME),
  ):
    if cand and os.path.exists(cand):
      return os.path.abspath(cand)
  return ""


def find_weights(notes: list[str]) -> str:
  """MobileNetV2 ImageNet checkpoint: carried, installed package or local cache; '' when none."""
  carried = sorted(glob.glob(os.path.join(CARRY, "weights", "mobilenet_v2-*.pth")))
  if carried:
    return carried[0]
  try:
    from ssdh_jax import weights

    return weights.resolve_pretrained("torchvision:mobilenet_v2", "mobilenet_v2", download=False)
  except Exception as e:
    notes.append(f"no MobileNetV2 ImageNet weights here ({str(e)[:120]}): trained from scratch.")
    return ""


def quality_config(p: dict[str, Any], workdir: str, notes: list[str]) -> tuple[Any, dict[str, Any]]:
  """(config, description) for the quality run: CIFAR-10 when the archive is found (unless data=digits)."""
  from configs import default
  from ssdh_jax import preprocessing

  steps, backbone = int(p["steps"]), p["backbone"]
  archive = find_archive() if p["data"] != "digits" else ""
  desc: dict[str, Any] = {"backbone": backbone, "steps": steps}
  if archive:
    from quality import unpack_cifar10

    from configs import cifar10_mobilenet_v2

    t = time.perf_counter()
    data_dir = unpack_cifar10(archive, os.path.join(workdir, "cifar10"))
    desc["unpack_s"] = time.perf_counter() - t
    c = cifar10_mobilenet_v2.get_config(str(p["bits"]))
    c.model.name = backbone
    c.data.manual_dir = data_dir
    c.data.cache_dir = os.path.join(workdir, "cache")
    desc["data"] = f"CIFAR-10 (protocol cifar10, {archive})"
  else:
    from configs import digits_demo

    c = default.set_bits(digits_demo.get_config(), int(p["bits"]))
    c.model.name = backbone
    if backbone != "small_cnn":  # 8-px digits are too small for an ImageNet net: resized to 32 px
      c.data.resize_size = c.data.image_size = 32
      c.model.preprocess = preprocessing.default_preprocess(backbone)
    npz = os.path.join(CARRY, "data", "digits.npz")
    if not have("sklearn") and os.path.exists(npz):
      c.data.source, c.data.arrays_path = "arrays", npz
      desc["data"] = f"digits (protocol digits, from {npz})"
    else:
      desc["data"] = "digits (protocol digits, scikit-learn's bundled 8x8 images)"
    if p["data"] != "digits":
      notes.append("CIFAR-10 archive not found (../shared/data, shared/data, .carry/data): digits instead.")
  c.train.num_steps = steps
  if p.get("batch"):
    c.train.batch_size = int(p["batch"])
  if p.get("image_size"):  # e.g. 32 for a CPU check of the CIFAR path: no upsampling
    c.data.image_size = c.data.resize_size = int(p["image_size"])
  c.train.eval_every = steps
  c.train.checkpoint_every = steps
  c.train.log_every = max(5, steps // 6)
  c.train.progress = False
  c.optim.warmup_steps = min(int(c.optim.warmup_steps), steps // 5)
  c.model.pretrained = ""
  if backbone == "mobilenet_v2":
    c.model.pretrained = find_weights(notes)
    if not c.model.pretrained:
      c.optim.backbone_lr_mult = 1.0  # from scratch: the whole network at the heads' rate
  desc.update(
    pretrained=c.model.pretrained or "none (random init)",
    image_size=int(c.data.image_size),
    batch=int(c.train.batch_size),
    dtype=c.model.dtype,
    on_device_augment=bool(c.data.on_device_augment),
  )
  return c, desc


def section_quality(p: dict[str, Any]) -> dict[str, Any]:
  import numpy as np

  if not have("ml_collections"):
    return {
      "status": "skipped",
      "reason": "ml_collections is not installed (the configs need it): carry its wheel",
    }
  notes: list[str] = []
  _shim_missing(notes)
  from ssdh_jax import train_lib

  root = p.get("workdir") or tempfile.mkdtemp(prefix="gpu_suite_quality_")
  cfg, desc = quality_config(p, root, notes)
  run = os.path.join(root, "run")
  t = time.perf_counter()
  res = train_lib.train_and_evaluate(cfg, run)
  wall = time.perf_counter() - t
  logged = []
  path = os.path.join(run, "metrics.jsonl")
  if os.path.exists(path):
    logged = [json.loads(line) for line in open(path)]
  ips = [r["images_per_sec"] for r in logged if "images_per_sec" in r][1:]  # window 1 includes compile
  m = res["metrics"]
  return {
    "status": "ok",
    **desc,
    "map": float(m["map"]),
    "precision_radius": float(m["precision_radius"]) if "precision_radius" in m else None,
    "map_r": int(cfg.eval.map_r),
    "split_hash": str(res.get("key", {}).get("split_hash", ""))[:12],
    "final_loss": next((r["loss"] for r in reversed(logged) if "loss" in r), None),
    "images_s": float(np.median(ips)) if ips else None,
    "wall_s": wall,
    "workdir": run,
    "notes": notes,
  }


# ------------------------------------------------------------------------------------------------ train


def section_train(p: dict[str, Any], gpu: bool, deadline: float) -> dict[str, Any]:
  """In this process: it only orchestrates bench_train's worker processes (nothing here touches the GPU)."""
  if not have("ml_collections"):
    return {
      "status": "skipped",
      "reason": "ml_collections is not installed (the configs need it): carry its wheel",
    }
  from bench import train_report, train_sides
  from bench.peers import loss_check
  from bench.train_setup import torch_loss_cfg

  notes: list[str] = []
  torch_dev, torch_ver = train_sides.torch_device(gpu, notes)
  threads = int(p.get("threads") or harness.default_threads(gpu))
  loss_cfg = torch_loss_cfg() if torch_dev else None
  if torch_dev:  # the two losses agree before their speeds are compared (on the CPU, in this process)
    from configs.default import get_config

    try:
      notes.append(
        "Numeric sanity, JAX loss vs torch_ref loss: " + loss_check.sanity_check(get_config().loss)
      )
    except Exception as e:
      notes.append(f"Numeric sanity not run: {type(e).__name__}: {str(e)[:200]}")
  cores, warm_cores = train_sides.core_plan(threads, bool(p["parallel_warmup"]))
  groups = [
    train_sides.build_group(
      name,
      p["dtype"],
      int(p["batch"]),
      image_size=int(p["image_size"]),
      threads=threads,
      torch_dev=torch_dev,
      warmup=int(p["warmup"]),
      loss_reps=int(p["loss_reps"]),
      augment=True,
      stored_size=int(p["stored_size"]),
      compile_backend=p["compile_backend"],
      timeout=float(p["timeout"]),
      compile_timeout=float(p["compile_timeout"]),
      loss_cfg=loss_cfg,
      cores=cores,
      warm_cores=warm_cores,
      torch_skip=notes[-1] if torch_dev is None and notes else "",
    )
    for name in p["backbones"]
  ]
  results = train_sides.run_groups(
    groups,
    int(p["rounds"]),
    int(p["per_round"]),
    train_sides.worker_env(gpu),
    parallel_warmup=bool(p["parallel_warmup"]),
    warm_all_first=bool(p["warm_all_first"]),
    deadline=deadline - float(p.get("timing_reserve_s", 0.0)),
  )
  kind = next((r.get("device_kind") for g in results for r in g["rows"] if r["framework"] == "jax"), "") or ""
  train_report.derive(results, kind if gpu else "", None)
  failed = [
    f"{g['backbone']} {r['label']}: {r['error']}"
    for g in results
    for r in g["rows"]
    if "error" in r and not r["error"].startswith("skipped")
  ]
  if p["warm_all_first"] and p["parallel_warmup"]:
    notes.append(
      "Every side of every backbone was built, compiled and warmed up at the same time (the compiles overlap;"
      " XLA's and cuDNN's autotuning then ran beside other work), then each backbone was timed alone."
    )
  return {
    "status": "failed" if failed else "ok",
    "reason": "; ".join(failed),
    "threads": threads,
    "header": harness.machine_header(threads),
    "torch": torch_ver,
    "groups": results,
    "notes": notes,
    "settings": p,
  }


# ------------------------------------------------------------------------------------------------ report


def markdown(report: dict[str, Any]) -> str:
  fmt = lambda v, f: "n/a" if v is None else format(v, f)
  env = report["environment"]
  lines = [
    f"# GPU suite{' — DRY RUN (CPU, tiny sizes; not a measurement)' if report['dry_run'] else ''}",
    "",
    f"Command: `{report['command']}`; started {report['started']}; wall {fmt(report.get('wall_s'), '.0f')} s "
    f"(budget {report['budget_s']:.0f} s).  ",
    f"Devices: {env['devices']}; {env['machine']}.  ",
    "Packages: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + ".",
  ]
  if report.get("install"):
    lines += [
      "",
      "Installation from carried wheels:",
      "",
      *[f"    {ln}" for ln in report["install"].splitlines()],
    ]
  sec = report["sections"]
  m = sec.get("metric")
  if m:
    lines += ["", "## mAP@R (ssdh_jax.metrics.mean_average_precision)", ""]
    if m.get("status") != "ok":
      lines.append(f"{m.get('status')}: {m.get('reason', '')}")
    else:
      lines += [
        f"{m['task']}; device {m['device']}; warm call = median of the timed calls after the first.",
        "",
        "| method | query_chunk | warm call s | compile s (first − warm) | mAP |",
        "|---|---:|---:|---:|---:|",
      ]
      for r in m["rows"]:
        lines.append(
          f"| {r['method']} | {r['query_chunk']} | {r['warm_s']:.3f} | {r['compile_s']:.2f} | {r['map']:.5f} |"
        )
      c = m["check"]
      lines += [
        "",
        f"Check on the first {c['queries']} queries: ssdh_jax {c['ssdh_jax']:.6f}, NumPy stable argsort "
        f"{c['numpy_stable']:.6f}, |Δ| = {c['abs_diff']:.1e}.",
      ]
  t = sec.get("train")
  if t:
    lines += ["", "## Train step: JAX vs PyTorch, paired and interleaved", ""]
    if t.get("status") == "skipped" or "groups" not in t:
      lines.append(f"{t.get('status')}: {t.get('reason', '')}")
    else:
      from bench import train_report

      s = t["settings"]
      lines += [
        f"bf16 compute where dtype says so; batch {s['batch']}, {s['image_size']}-px crops + flips on the device "
        f"from {s['stored_size']}-px uint8 images; {s['rounds']} rounds × median of {s['per_round']} step(s) per "
        f"side, after compile + {s['warmup']} warm-up step(s). Status: {t['status']}"
        + (f" ({t['reason']})" if t.get("reason") else "")
        + ".",
        "",
        *train_report.markdown_tables(t["groups"], t["header"]),
        "",
        "t_side / t_JAX > 1: JAX is faster. Step times and images/s are context only.",
        *[f"- {n}" for n in t.get("notes", [])],
      ]
  q = sec.get("quality")
  if q:
    lines += ["", "## Quality: short SSDH run (train_lib.train_and_evaluate)", ""]
    if q.get("status") != "ok":
      lines.append(f"{q.get('status')}: {q.get('reason', '')}")
    else:
      lines += [
        "| data | backbone | px | batch | dtype | steps | pretrained | mAP@" + ("all" if not q["map_r"] else
        str(q["map_r"])) + " | P@H≤2 | images/s (after window 1) | wall s (incl. data, compile, eval) |",
        "|---|---|---:|---:|---|---:|---|---:|---:|---:|---:|",
        f"| {q['data']} | {q['backbone']} | {q['image_size']} | {q['batch']} | {q['dtype']} | {q['steps']} | "
        f"{q['pretrained']} | {q['map']:.4f} | {fmt(q['precision_radius'], '.4f')} | {fmt(q['images_s'], ',.0f')} | "
        f"{q['wall_s']:.0f} |",
        *[f"- {n}" for n in q.get("notes", [])],
      ]  # fmt: skip
  return "\n".join(lines) + "\n"


def write(report: dict[str, Any], out: str) -> None:
  harness.write_text(os.path.join(out, "gpu_suite.json"), json.dumps(report, indent=1, default=str))
  harness.write_text(os.path.join(out, "gpu_suite.md"), markdown(report))


class SectionProcess:
  """A section in its own interpreter (its own GPU memory; killed with its children when over time)."""

  def __init__(self, name: str, params: dict[str, Any], env: dict[str, str] | None = None):
    fd, self.path = tempfile.mkstemp(suffix=f".{name}.json")
    os.close(fd)
    cmd = harness.module_argv("bench.gpu_suite", "--section", name, "--params", json.dumps(params))
    self.t0 = time.perf_counter()
    self.proc = subprocess.Popen(
      [*cmd, "--result", self.path], stdout=sys.stderr, start_new_session=True, env=env, cwd=ROOT
    )

  def kill(self) -> None:
    if self.proc.poll() is None:
      os.killpg(self.proc.pid, signal.SIGKILL)
      self.proc.wait()

  def result(self, timeout: float) -> dict[str, Any]:
    try:
      rc = self.proc.wait(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
      self.kill()
      os.remove(self.path)
      return {"status": "skipped", "reason": f"did not finish in {timeout:.0f} s (killed)"}
    try:
      with open(self.path) as f:
        result = json.load(f)
    except (OSError, ValueError):
      result = {"status": "failed", "reason": f"exited {rc} without a result"}
    finally:
      with contextlib.suppress(OSError):
        os.remove(self.path)
    result["section_wall_s"] = time.perf_counter() - self.t0
    return result


def section_main(name: str, params_json: str, result_path: str) -> int:
  params = json.loads(params_json)
  try:
    result = {"metric": section_metric, "quality": section_quality}[name](params)
  except Exception as e:
    traceback.print_exc()
    result = {"status": "failed", "reason": f"{type(e).__name__}: {str(e)[:300]}"}
  with open(result_path, "w") as f:
    json.dump(result, f, default=str)
  return 0 if result.get("status") == "ok" else 1


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, every code path (~2 min)")
  ap.add_argument("--out", default="", help="output folder (default $OUT, else bench/results/gpu_suite)")
  ap.add_argument("--budget-s", type=float, default=0.0, help="seconds for the whole suite (default 480)")
  ap.add_argument("--only", default="", help=f"comma-separated subset of {','.join(SECTIONS)}")
  ap.add_argument(
    "--backbones", default="", help="train section backbones (default vgg_f,vgg16,mobilenet_v2)"
  )
  ap.add_argument("--steps", type=int, default=0, help="quality run steps (default 300; dry run 10)")
  ap.add_argument("--quality-image-size", type=int, default=0, help="quality run input size (default 224)")
  ap.add_argument(
    "--keep-workdir", action="store_true", help="keep the quality run's folder (default: deleted)"
  )
  ap.add_argument("--install-log", default="", help=argparse.SUPPRESS)
  ap.add_argument("--section", default="", help=argparse.SUPPRESS)
  ap.add_argument("--params", default="", help=argparse.SUPPRESS)
  ap.add_argument("--result", default="", help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.section:
    return section_main(args.section, args.params, args.result)

  t0 = time.monotonic()
  P = json.loads(json.dumps(DRY if args.dry_run else FULL))
  if args.dry_run:
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")  # tiny programs: compile time dominates
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # the workers share the GPU
  if args.budget_s:
    P["budget_s"] = args.budget_s
  if args.backbones:
    P["train"]["backbones"] = args.backbones.split(",")
  if args.steps:
    P["quality"]["steps"] = args.steps
  if args.quality_image_size:
    P["quality"]["image_size"] = args.quality_image_size
  only = args.only.split(",") if args.only else list(SECTIONS)
  out = args.out or os.environ.get("OUT") or os.path.join(BENCH_DIR, "results", "gpu_suite")
  deadline = t0 + P["budget_s"]

  import jax

  gpu = jax.default_backend() == "gpu"
  devices = ", ".join(f"{d.platform}:{d.device_kind}" for d in jax.devices())
  threads = 1 if not gpu else os.cpu_count() or 1
  install = ""
  if args.install_log and os.path.exists(args.install_log):
    install = open(args.install_log).read().strip()
  report: dict[str, Any] = {
    "suite": "bench.gpu_suite",
    "dry_run": args.dry_run,
    "command": " ".join(["python -m bench.gpu_suite", *(argv if argv is not None else sys.argv[1:])]),
    "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "budget_s": P["budget_s"],
    "settings": P,
    "environment": {
      "python": platform.python_version(),
      "platform": platform.platform(),
      "devices": devices,
      "backend": jax.default_backend(),
      "machine": harness.machine_header(threads),
      "versions": versions(),
      "missing": [m for m in ("ml_collections", "tqdm", "torch", "matplotlib", "sklearn") if not have(m)],
    },
    "install": install,
    "sections": {},
  }
  if not gpu and not args.dry_run:
    report["sections"] = {
      s: {"status": "skipped", "reason": f"no GPU visible to JAX ({devices}); use --dry-run"} for s in only
    }
    write(report, out)
    print(markdown(report))
    return 1
  write(report, out)
  quality_params = dict(P["quality"], workdir=tempfile.mkdtemp(prefix="gpu_suite_quality_"))
  started: dict[str, SectionProcess] = {}
  if args.dry_run:  # nothing is measured: the sections overlap (about half the wall time)
    # The quality run executes more than it compiles: XLA's optimisations pay for themselves there.
    q_env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="0")
    if "metric" in only:
      started["metric"] = SectionProcess("metric", P["metric"])
    if "quality" in only:
      started["quality"] = SectionProcess("quality", quality_params, q_env)
  try:
    for name in SECTIONS:
      if name not in only:
        continue
      left = deadline - time.monotonic()
      print(f"[gpu_suite] {name}: {left:.0f} s of the budget left", file=sys.stderr, flush=True)
      t = time.perf_counter()
      if name == "train":
        reserve = P["quality"]["reserve_s"] if "quality" in only and not started else 0.0
        try:
          res = section_train(P["train"], gpu, deadline - reserve)
        except Exception as e:
          traceback.print_exc()
          res = {"status": "failed", "reason": f"{type(e).__name__}: {str(e)[:300]}"}
      elif left < 10 and name not in started:
        res = {"status": "skipped", "reason": "suite time budget spent"}
      else:
        sp = started.get(name) or SectionProcess(name, P[name] if name == "metric" else quality_params)
        res = sp.result(min(150.0, left - 30) if name == "metric" and not started else left - 5)
      res.setdefault("section_wall_s", time.perf_counter() - t)
      report["sections"][name] = res
      report["wall_s"] = time.monotonic() - t0
      write(report, out)
      print(f"[gpu_suite] {name}: {res.get('status')} after {res['section_wall_s']:.0f} s", file=sys.stderr)
  finally:
    for sp in started.values():
      sp.kill()
    if not args.keep_workdir:
      shutil.rmtree(quality_params["workdir"], ignore_errors=True)
      report["sections"].get("quality", {}).pop("workdir", None)
  report["wall_s"] = time.monotonic() - t0
  write(report, out)
  print(markdown(report))
  print(f"[gpu_suite] wrote {out}/gpu_suite.json and gpu_suite.md", file=sys.stderr)
  return 0 if all(s.get("status") in ("ok", "skipped") for s in report["sections"].values()) else 1


if __name__ == "__main__":
  sys.exit(main())
