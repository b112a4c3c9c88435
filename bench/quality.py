"""Retrieval quality grid on real CIFAR-10: {SSDH, supervised-only, DPSH, ITQ, LSH} x bits (x seeds).

  python bench/quality.py --quick            # CPU: 32x32 small CNN from scratch, short schedule
  python bench/quality.py --pretrained       # CPU: ImageNet MobileNetV2 at 160 px, frozen up to --trainable
  python bench/quality.py --full             # GPU: MobileNetV2 (packaged ImageNet weights) at 224 + small CNN

Protocol `cifar10` (1,000 queries / 5,000 labeled / 54,000 unlabeled + database), split seed fixed so every
method sees the same labeled set and the same step budget. ITQ and LSH hash fixed ImageNet MobileNetV2 features
(global-pooled, 1280-d) of the same images. In --pretrained mode every trained method fine-tunes the same
partly frozen MobileNetV2, whose frozen prefix is computed once for the whole grid (the feature cache), and
ITQ/LSH hash that backbone's frozen pooled features at the same input size. The table (mAP@all, P@H<=2, wall time, images/s, seed, split hash,
backbone, command) is printed and written to --out; per-run reports stay under --workdir.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import sys
import tarfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

ARCHIVE = os.path.join(ROOT, "..", "shared", "data", "cifar10-jpeg.tar.xz")


def unpack_cifar10(archive: str, dest: str) -> str:
  """Unpacks the JPEG archive once (train/<class>/*.jpg, test/<class>/*.jpg); returns the folder."""
  marker = os.path.join(dest, ".complete")
  if os.path.exists(marker):
    return dest
  if not os.path.exists(archive):
    raise FileNotFoundError(f"{archive}: CIFAR-10 archive not found (pass --archive)")
  os.makedirs(dest, exist_ok=True)
  with tarfile.open(archive, "r:xz") as tar:
    tar.extractall(dest, filter="data")
  # The archive may hold one top-level folder; point at the one with train/ and test/.
  for cand in [dest, *[os.path.join(dest, d) for d in os.listdir(dest)]]:
    if os.path.isdir(os.path.join(cand, "train")) and os.path.isdir(os.path.join(cand, "test")):
      if cand != dest:
        for name in ("train", "test"):
          os.replace(os.path.join(cand, name), os.path.join(dest, name))
      break
  open(marker, "w").close()
  return dest


def packaged_mobilenet_v2() -> str:
  """torchvision's ImageNet MobileNetV2 checkpoint from the installed weight package or the local cache."""
  from ssdh_jax import weights

  return weights.resolve_pretrained("torchvision:mobilenet_v2", "mobilenet_v2", download=False)


def _logged(run_dir: str, name: str) -> list[float]:
  path = os.path.join(run_dir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  vals = [json.loads(line).get(name) for line in open(path)]
  return [float(v) for v in vals if v is not None]


def _images_per_sec(run_dir: str) -> float:
  vals = _logged(run_dir, "images_per_sec")[1:]  # the first window includes compilation
  return float(np.median(vals)) if vals else float("nan")


def _graph_purity(run_dir: str) -> float:
  """Label agreement of the online graph's neighbour pairs (labeled ones) in the last logged window."""
  vals = _logged(run_dir, "graph_purity")
  return vals[-1] if vals else float("nan")


def _graph_purity_mean(run_dir: str) -> float:
  """The same, averaged over every logged window of the run."""
  vals = _logged(run_dir, "graph_purity")
  return float(np.mean(vals)) if vals else float("nan")


TERMS = ("rank", "emb", "pl", "cls", "pair", "quant")


def _grad_shares(run_dir: str) -> dict[str, float]:
  """Each loss term's share of the summed per-term gradient norms, and its cosine with the total gradient,
  averaged over the logged windows (runs with train.term_grad_norms only)."""
  rows = (
    [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    if os.path.exists(os.path.join(run_dir, "metrics.jsonl"))
    else []
  )
  rows = [r for r in rows if any(f"gnorm_{t}" in r for t in TERMS)]
  out: dict[str, float] = {}
  if not rows:
    return out
  for t in TERMS:
    if f"gnorm_{t}" not in rows[0]:
      continue
    shares = [r[f"gnorm_{t}"] / max(sum(r.get(f"gnorm_{u}", 0.0) for u in TERMS), 1e-30) for r in rows]
    out[f"gshare_{t}"] = float(np.mean(shares))
    out[f"gcos_{t}"] = float(np.mean([r[f"gcos_{t}"] for r in rows]))
  return out


def _config_module(backbone: str):
  if backbone == "mobilenet_v2_cpu":
    from configs import cifar10_mobilenet_v2_cpu as cfg_mod
  elif backbone == "mobilenet_v2":
    from configs import cifar10_mobilenet_v2 as cfg_mod
  else:
    from configs import cifar10_small_cnn as cfg_mod
  return cfg_mod


def _config_name(args, backbone: str) -> str:
  return "mobilenet_v2_cpu" if args.pretrained and backbone == "mobilenet_v2" else backbone


def backbone_label(args, backbone: str, trainable: str = "") -> str:
  """How a trained row names its network (and what keys it on resume)."""
  if args.pretrained and backbone == "mobilenet_v2":
    return f"mobilenet_v2 ImageNet {args.image_size}px, trainable={trainable or args.trainable}"
  return backbone


def base_config(args, bits: int, backbone: str):
  c = _config_module(_config_name(args, backbone)).get_config(str(bits))
  c.data.manual_dir = args.data_dir
  c.data.cache_dir = os.path.join(args.data_dir, "cache")
  c.data.split_seed = args.split_seed
  c.train.progress = False
  if backbone == "mobilenet_v2":
    c.model.pretrained = args.mobilenet_weights
  if args.pretrained:
    c.data.resize_size = c.data.image_size = args.image_size
    c.model.trainable = args.trainable
    c.train.term_grad_norms = 25
    if args.steps:
      c.train.num_steps = c.train.eval_every = c.train.checkpoint_every = args.steps
  if args.quick:
    c.model.width = args.width
    c.train.num_steps = args.steps
    c.train.eval_every = args.steps
    c.train.checkpoint_every = args.steps
    c.train.log_every = max(args.steps // 10, 1)
    c.train.term_grad_norms = max(args.steps // 20, 1)  # per-term gradient shares for the summary
    c.eval.val_database = 2000
  elif args.steps:
    c.train.num_steps = args.steps
  return c


METHODS = {
  "ssdh": {},
  "supervised": {"loss.lam": 0.0, "data.include_unlabeled": False},
  "dpsh": {"loss.name": "dpsh", "data.include_unlabeled": False, "loss.extra_terms": ()},  # SSDH's terms only
  # Remedies for unlabeled terms that hurt (issue 12, section 4), each one config change:
  "ssdh_features": {"loss.graph_feature": "features"},  # graph from backbone features, not the codes
  "ssdh_release": {"loss.variant": "multi_label"},  # the release's full objective: + pseudo-label, class
  "ssdh_ramp": {"loss.lam_rampup_steps": -1},  # λ ramped up over the first half of training (-1: steps/2)
  # Graph edges only between rows predicted in the same class; the class head this reads is trained by L_cls,
  # which also shapes the features, hence its own control: supervised-only with the same class term.
  "ssdh_agree": {"loss.graph_filter": "class_agree", "loss.cls_in_single_label": True},
  "supervised_cls": {"loss.lam": 0.0, "data.include_unlabeled": False, "loss.cls_in_single_label": True},
  # SSDH batches hold half as many labeled images as supervised-only ones (labeled_fraction 0.5). Diagnostic:
  # the same batches with λ = 0 (what the halving alone costs); remedy: twice the batch, so as many labeled
  # images per step as supervised-only, plus as many unlabeled ones.
  "ssdh_lam0": {"loss.lam": 0.0},
  "ssdh_b2x": {"train.batch_size": -2},  # -2: twice the config's batch
}
# The supervised-only rows each SSDH variant is paired with (default: plain supervised-only).
CONTROLS = {"ssdh_agree": ("supervised", "supervised_cls")}
SEEDED = (
  "ssdh",
  "supervised",
  "ssdh_features",
  "ssdh_release",
  "ssdh_ramp",
  "ssdh_agree",
  "supervised_cls",
  "ssdh_lam0",
  "ssdh_b2x",
)  # run for every seed; the rest seed 0
E2E = "ssdh_e2e"  # --e2e: SSDH with every backbone layer trainable (no cache), 48 bits, seed 0


def method_config(args, method: str, bits: int, seed: int, backbone: str):
  """The locked training config of one grid cell."""
  c = base_config(args, bits, backbone)
  c.seed = seed
  if method == E2E:
    c.model.trainable = "all"
    c.train.batch_size = args.e2e_batch
    c.train.num_steps = c.train.eval_every = c.train.checkpoint_every = args.e2e_steps
    c.train.log_every = max(args.e2e_steps // 5, 1)
    c.train.term_grad_norms = 0  # one backward pass per term over the whole network: too dear here
  for key, value in METHODS.get(method, {}).items():
    sect, field = key.split(".")
    if key == "loss.lam_rampup_steps" and value < 0:
      value = c.train.num_steps // 2
    elif key == "train.batch_size" and value < 0:
      value = -value * c.train.batch_size
    c[sect][field] = value
  c.lock()
  return c


def _flat(d: dict) -> dict:
  from ssdh_jax.run_dir import flat_fields

  return flat_fields(d)


def train_command(config, backbone: str, bits: int, workdir: str) -> str:
  """The train.py command line that trains this cell alone: the config file plus every field that differs.

  backbone: the config module's suffix (small_cnn, mobilenet_v2, mobilenet_v2_cpu).
  """
  ref = _flat(_config_module(backbone).get_config(str(bits)).to_dict())
  flags = [
    f"--config.{k}={shlex.quote(str(v))}"
    for k, v in sorted(_flat(config.to_dict()).items())
    if k != "train.progress" and ref.get(k) != v
  ]
  return " ".join(
    ["python train.py", f"--config configs/cifar10_{backbone}.py:{bits}", *flags, f"--workdir {workdir}"]
  )


def _run_dir(args, method: str, bits: int, seed: int, backbone: str) -> str:
  name = _config_name(args, backbone)
  if args.pretrained and backbone == "mobilenet_v2":
    name += f"{args.image_size}_{'all' if method == E2E else args.trainable}"
  return os.path.join(args.workdir, f"{name}_{method}_{bits}b_s{seed}")


def derived_fields(args, method: str, bits: int, seed: int, backbone: str) -> dict:
  """Row fields that follow from the arguments and the run directory alone (so rows written by an older
  version of this script can be brought up to date without training again)."""
  run_dir = _run_dir(args, method, bits, seed, backbone)
  config = method_config(args, method, bits, seed, backbone)
  return {
    "graph_purity": _graph_purity(run_dir),
    "graph_purity_mean": _graph_purity_mean(run_dir),
    **_grad_shares(run_dir),
    "command": train_command(config, _config_name(args, backbone), bits, run_dir),
  }


def train_method(args, method: str, bits: int, seed: int, backbone: str) -> dict:
  from ssdh_jax import train_lib

  c = method_config(args, method, bits, seed, backbone)
  run_dir = _run_dir(args, method, bits, seed, backbone)
  t0 = time.perf_counter()
  res = train_lib.train_and_evaluate(c, run_dir)
  wall = time.perf_counter() - t0
  return {
    "method": method,
    "bits": bits,
    "seed": seed,
    "backbone": backbone_label(args, backbone, c.model.trainable),
    "map": float(res["metrics"]["map"]),
    "p_h2": float(res["metrics"]["precision_radius"]),
    "wall_s": wall,
    "images_per_sec": _images_per_sec(run_dir),
    "split_hash": res["key"]["split_hash"],
    "steps": int(c.train.num_steps),
    **derived_fields(args, method, bits, seed, backbone),
  }


def backbone_features(args, splits, size: int) -> dict[str, np.ndarray]:
  """Global-pooled ImageNet MobileNetV2 features of the query and database images (fixed; no training)."""
  import jax
  import jax.numpy as jnp

  from ssdh_jax import models, preprocessing, weights

  net = models.build_backbone("mobilenet_v2", num_classes=1000)
  variables = models.init_variables(net, jax.random.PRNGKey(0), size)
  variables = weights.load_pretrained(variables, args.mobilenet_weights, "mobilenet_v2")
  feat_net = models.build_backbone("mobilenet_v2", num_classes=0)

  @jax.jit
  def feats(images):
    x = jax.image.resize(images.astype(jnp.float32), (images.shape[0], size, size, 3), "bilinear")
    return feat_net.apply(variables, preprocessing.preprocess(x, "imagenet"), train=False)

  out = {}
  for name in ("query", "database"):
    ex = splits[name]
    chunks = [np.asarray(feats(ex.images[i : i + 500])) for i in range(0, len(ex), 500)]
    out[name] = np.concatenate(chunks)
  return out


def pretrained_pooled_features(args) -> tuple[dict[str, np.ndarray], dict, dict]:
  """Frozen pooled ImageNet MobileNetV2 features at --image-size for ITQ/LSH, read through the grid's own
  feature cache (the cached input of the first trainable layer, then the frozen remaining layers)."""
  import jax

  from ssdh_jax import models, train_lib
  from ssdh_jax.data import pipeline

  c = method_config(args, "ssdh", 48, 0, "mobilenet_v2")
  workdir = os.path.join(args.workdir, "features")
  splits, meta = pipeline.load_splits(c, workdir)
  init_model = models.build_model(c.model)
  tx, _, _ = train_lib.make_tx(c, models.variable_shapes(init_model, 32)["params"])
  state = train_lib.create_train_state(c, init_model, tx, jax.random.PRNGKey(0))
  _, view, _ = train_lib.input_view(c, state, splits, workdir)
  layer = train_lib.cached_prefix_layer(c)
  rest = models.build_backbone(
    "mobilenet_v2", layers=(layer, len(models.backbone_layers("mobilenet_v2")), 99)
  )
  variables = {"params": state.params["backbone"], "batch_stats": state.batch_stats["backbone"]}
  apply = jax.jit(lambda x: rest.apply(variables, x, train=False))
  out = {}
  for name in ("query", "database"):
    x = view[name].images
    out[name] = np.concatenate([np.asarray(apply(x[i : i + 1000])) for i in range(0, len(x), 1000)])
  return out, splits, meta


def shallow_method(args, method: str, bits: int, feats, splits, meta) -> dict:
  import jax

  from ssdh_jax import baselines, hashing, metrics

  t0 = time.perf_counter()
  key = jax.random.PRNGKey(0)
  db_f, q_f = feats["database"], feats["query"]
  if method == "itq":
    params, _ = baselines.itq_fit(key, db_f, bits, n_iter=50)
    enc = baselines.itq_encode
  else:
    params = baselines.lsh_fit(key, db_f, bits)
    enc = baselines.lsh_encode
  q = np.asarray(hashing.pack_bits(enc(params, q_f)))
  d = np.asarray(hashing.pack_bits(enc(params, db_f)))
  res = metrics.evaluate_codes(
    q, d, splits["query"].labels, splits["database"].labels, bits=bits, R=0, pr_rank_points=0
  )
  return {
    "method": method,
    "bits": bits,
    "seed": 0,
    "backbone": _fixed_label(args),
    "map": float(res["map"]),
    "p_h2": float(res["precision_radius"]),
    "wall_s": time.perf_counter() - t0,
    "features_s": feats["seconds"],  # shared by every ITQ/LSH row; not part of wall_s
    "images_per_sec": float("nan"),
    "split_hash": meta["split_hash"],
    "steps": 0,
    "command": (
      f"python bench/quality.py --{_mode(args)} --methods {method} --bits {bits} "
      + (f"--image-size {args.image_size}" if args.pretrained else f"--feature-size {args.feature_size}")
      + f" --split-seed {args.split_seed}"
    ),
  }


def _mode(args) -> str:
  return "quick" if args.quick else "pretrained" if args.pretrained else "full"


def _fixed_label(args) -> str:
  size = args.image_size if args.pretrained else args.feature_size
  return f"mobilenet_v2 ImageNet features @{size}px (fixed)"


def _host() -> str:
  model = ""
  if os.path.exists("/proc/cpuinfo"):
    model = next(
      (ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), ""
    )
  return f"{os.cpu_count()} host cores{f' ({model})' if model else ''}"


def _load_rows(path: str) -> dict[tuple, dict]:
  """Finished runs from an earlier (interrupted) invocation, keyed by what determines them."""
  done = {}
  if os.path.exists(path):
    for n, line in enumerate(open(path), 1):
      try:
        r = json.loads(line)
        done[(r["method"], r["bits"], r["seed"], r["backbone"], r["steps"], r["width"])] = r
      except (ValueError, KeyError) as e:
        raise ValueError(f"{path}:{n}: not a quality row ({e}); delete the file to start over") from None
  return done


def _mean_sd(v: list[float], digits: int = 4) -> str:
  sd = f"{np.std(v, ddof=1):.{digits}f}" if len(v) > 1 else "n/a"
  return f"{np.mean(v):.{digits}f} ± {sd}"


def _finite(g: list[dict], key: str) -> list[float]:
  return [r[key] for r in g if key in r and np.isfinite(r[key])]


def summary(rows: list[dict]) -> list[str]:
  """Per (method, bits, backbone): mean ± sample std over seeds, the online graph's neighbour purity (end of
  training and mean over it) and the graph-embedding term's share of the per-term gradient norms with its
  cosine to the total gradient; then each SSDH variant minus supervised-only, paired by seed."""
  groups: dict[tuple, list[dict]] = {}
  for r in rows:
    groups.setdefault((r["method"], r["bits"], r["backbone"]), []).append(r)
  out = [
    "| method | bits | backbone | seeds | mAP@all mean ± std | P@H≤2 mean ± std | wall s/run | images/s "
    "| graph purity (end) | graph purity (mean) | emb grad share | cos(emb grad, total) |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for (m, b, bb), g in groups.items():
    ips = _finite(g, "images_per_sec")
    cells = [
      _mean_sd(v, 3) if v else "n/a" for v in (_finite(g, k) for k in ("graph_purity", "graph_purity_mean"))
    ]
    cells += [
      f"{np.mean(v):.3f}" if v and not m.startswith("supervised") else "n/a"
      for v in (_finite(g, k) for k in ("gshare_emb", "gcos_emb"))
    ]
    out.append(
      f"| {m} | {b} | {bb} | {len(g)} | {_mean_sd([r['map'] for r in g])} | {_mean_sd([r['p_h2'] for r in g])} "
      f"| {np.mean([r['wall_s'] for r in g]):.0f} | {f'{np.median(ips):.0f}' if ips else 'n/a'} "
      f"| {' | '.join(cells)} |"
    )
  pairs = []
  for (m, b, bb), g in groups.items():
    if not m.startswith("ssdh") or m == E2E:
      continue
    for control in CONTROLS.get(m, ("supervised",)):
      sup = {r["seed"]: r["map"] for r in groups.get((control, b, bb), [])}
      ssdh = {r["seed"]: r["map"] for r in g}
      seeds = sorted(set(sup) & set(ssdh))
      if not seeds:
        continue
      gaps = [ssdh[s] - sup[s] for s in seeds]
      head = f"| {m} | {control} | {b} | {bb} | {len(seeds)} |"
      if len(seeds) == 1:
        pairs.append(f"{head} {gaps[0]:.4f} | n/a | no (one seed) |")
        continue
      spread = max(np.std([ssdh[s] for s in seeds], ddof=1), np.std([sup[s] for s in seeds], ddof=1))
      verdict = "yes" if np.mean(gaps) > spread else "no"
      pairs.append(f"{head} {_mean_sd(gaps)} | {spread:.4f} | {verdict} |")
  if pairs:
    out += [
      "",
      "SSDH (and each remedy) minus its supervised-only control (mAP@all, paired by seed); spread = the larger "
      "of the two seed std's:",
      "",
      "| method | control | bits | backbone | seeds | gap mean ± std | spread | gap > spread |",
      "|---|---|---|---|---|---|---|---|",
      *pairs,
    ]
  return out


CORE_METHODS = ("ssdh", "supervised", "dpsh", "itq", "lsh")  # issue 12's grid, without remedies or --e2e


def core_grid_line(rows: list[dict], extraction: float) -> str:
  """The wall time of the core grid alone (CORE_METHODS): what `make quality*` costs without the remedies."""
  walls = [r["wall_s"] for r in rows if r["method"] in CORE_METHODS and np.isfinite(r.get("wall_s", np.nan))]
  total = sum(walls) + extraction
  return (
    f"Core grid ({', '.join(CORE_METHODS)}): {len(walls)} runs, {sum(walls) / 60:.0f} min"
    + (f" + {extraction / 60:.0f} min extraction" if extraction else "")
    + f" = {total / 3600:.2f} h."
  )


def table(rows: list[dict], header: str) -> str:
  cols = [
    "method",
    "bits",
    "backbone",
    "seed",
    "map",
    "p_h2",
    "wall_s",
    "images_per_sec",
    "steps",
    "split_hash",
    "command",
  ]
  lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  for r in rows:
    vals = []
    for c in cols:
      v = r[c]
      if c == "split_hash":
        v = str(v)[:12]
      elif c == "command":
        v = f"`{v}`"
      elif isinstance(v, float):
        v = f"{v:.4f}" if c in ("map", "p_h2") else f"{v:.1f}"
      vals.append(str(v))
    lines.append("| " + " | ".join(vals) + " |")
  walls = [r["wall_s"] for r in rows if np.isfinite(r.get("wall_s", np.nan))]
  extraction = next((r["features_s"] for r in rows if "features_s" in r), 0.0)
  lines += [
    "",
    f"Grid wall time: {len(walls)} runs, {sum(walls) / 60:.0f} min summed over the rows' wall_s"
    + (f" + {extraction / 60:.0f} min one-off feature extraction" if extraction else "")
    + f" = {(sum(walls) + extraction) / 3600:.2f} h.",
    core_grid_line(rows, extraction),
    "",
    *summary(rows),
  ]
  return "\n".join(lines) + "\n"


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  mode = p.add_mutually_exclusive_group(required=True)
  mode.add_argument("--quick", action="store_true")
  mode.add_argument("--full", action="store_true")
  mode.add_argument("--pretrained", action="store_true")
  p.add_argument("--bits", default="", help="comma list (quick: 12,48; full: 12,24,32,48)")
  p.add_argument("--seeds", type=int, default=3, help="seeds for SSDH and supervised-only")
  p.add_argument("--methods", default="ssdh,supervised,dpsh,itq,lsh")
  p.add_argument(
    "--backbones", default="", help="trained backbones (quick: small_cnn; full: mobilenet_v2,small_cnn)"
  )
  p.add_argument("--steps", type=int, default=0, help="train steps (quick default 500; pretrained: config's)")
  p.add_argument("--image-size", type=int, default=160, help="--pretrained: input size (px)")
  p.add_argument(
    "--trainable", default="heads", help="--pretrained: first trainable backbone layer (the config's: heads)"
  )
  p.add_argument("--e2e", action="store_true", help="--pretrained: add one all-layers-trainable SSDH run")
  p.add_argument("--e2e-steps", type=int, default=100, help="steps of the --e2e run")
  p.add_argument("--e2e-batch", type=int, default=64, help="global batch of the --e2e run")
  p.add_argument("--width", type=int, default=32, help="small_cnn width in --quick")
  p.add_argument(
    "--feature-size", type=int, default=0, help="input size for ITQ/LSH features (quick 64, full 224)"
  )
  p.add_argument("--archive", default=ARCHIVE)
  p.add_argument("--data-dir", default="/tmp/ssdh_cifar10")
  p.add_argument("--workdir", default="/tmp/ssdh_quality")
  p.add_argument("--split-seed", type=int, default=0)
  p.add_argument("--mobilenet-weights", default="")
  p.add_argument("--out", default="")
  p.add_argument(
    "--report-only",
    action="store_true",
    help="print the table of every row in <workdir>/rows.jsonl; train nothing",
  )
  args = p.parse_args(argv)
  args.steps = args.steps or (500 if args.quick else 0)
  args.feature_size = args.feature_size or (64 if args.quick else 224)
  bits_list = [int(b) for b in (args.bits or ("12,48" if args.quick else "12,24,32,48")).split(",")]
  methods = args.methods.split(",")
  for m in methods:
    if m not in (*METHODS, "itq", "lsh"):
      p.error(f"--methods: {m!r} is not one of {', '.join([*METHODS, 'itq', 'lsh'])}")
  default_backbones = (
    "small_cnn" if args.quick else "mobilenet_v2" if args.pretrained else "mobilenet_v2,small_cnn"
  )
  backbones = (args.backbones or default_backbones).split(",")
  for b in backbones:
    if b not in ("small_cnn", "mobilenet_v2"):
      p.error(f"--backbones: {b!r} is not one of small_cnn, mobilenet_v2")
  if not args.mobilenet_weights:
    args.mobilenet_weights = packaged_mobilenet_v2()
  args.data_dir = unpack_cifar10(args.archive, args.data_dir)
  os.makedirs(args.workdir, exist_ok=True)

  # Rows are appended as each run finishes, so an interrupted grid resumes where it stopped.
  rows_path = os.path.join(args.workdir, "rows.jsonl")
  done = _load_rows(rows_path)
  rows: list[dict] = []

  def record(key: tuple, make, refresh=None) -> None:
    row = done.get(key)
    if row is None:
      row = make()
      row["width"] = key[5]
      with open(rows_path, "a") as f:
        f.write(json.dumps(row) + "\n")
    elif refresh is not None:  # stored values win, except the command, whose form changed across versions
      row.update({k: v for k, v in refresh().items() if k == "command" or k not in row})
    print(json.dumps(row), flush=True)
    rows.append(row)

  if args.report_only:
    rows.extend(done.values())
    methods, bits_list, args.seeds, args.e2e = [], [], 0, False
  # Cheap fixed-feature baselines first, then seeds outermost so a cut-short grid still pairs SSDH with
  # supervised-only on the same seeds.
  # Fixed-feature rows do not depend on the seed, --steps or --width: keyed with 0 for those.
  fbb = _fixed_label(args)
  shallow = [(m, b, 0, fbb, 0, 0) for b in bits_list for m in ("itq", "lsh") if m in methods]
  feats = splits = meta = None
  if any(key not in done for key in shallow):
    from ssdh_jax.data import pipeline

    t0 = time.perf_counter()
    if args.pretrained:
      feats, splits, meta = pretrained_pooled_features(args)
    else:
      c = base_config(args, bits_list[0], "small_cnn")
      c.lock()
      splits, meta = pipeline.load_splits(c, os.path.join(args.workdir, "features"))
      feats = backbone_features(args, splits, args.feature_size)
    feats["seconds"] = time.perf_counter() - t0
  for key in shallow:
    record(key, functools.partial(shallow_method, args, key[0], key[1], feats, splits, meta))
  for seed in range(args.seeds):
    for bits in bits_list:
      for backbone in backbones:
        for method in METHODS:
          if method not in methods or (method not in SEEDED and seed > 0):
            continue
          key = (
            method,
            bits,
            seed,
            backbone_label(args, backbone),
            args.steps,
            args.width if backbone == "small_cnn" else 0,
          )
          cell = (args, method, bits, seed, backbone)
          record(key, functools.partial(train_method, *cell), functools.partial(derived_fields, *cell))
  if args.e2e:
    cell = (args, E2E, 48, 0, "mobilenet_v2")
    key = (E2E, 48, 0, backbone_label(args, "mobilenet_v2", "all"), args.e2e_steps, 0)
    record(key, functools.partial(train_method, *cell), functools.partial(derived_fields, *cell))
  import jax

  device = f"{jax.devices()[0].device_kind} ({jax.default_backend()}, jax {jax.__version__}), {_host()}"
  feat_s = [r["features_s"] for r in rows if "features_s" in r]
  cmd = "python " + " ".join(shlex.quote(a) for a in ["bench/quality.py", *(argv or sys.argv[1:])])
  what = (
    "Frozen-prefix extraction (feature cache, once for the whole grid; not in any wall_s)"
    if args.pretrained
    else "ITQ/LSH feature extraction (once, not in their wall_s)"
  )
  header = (
    f"## Quality grid — protocol cifar10, metric mAP@all (R = all) and P@H<=2\n\n"
    f"Command: `{cmd}`  \nMachine: {device}" + (f"  \n{what}: {feat_s[0]:.0f} s" if feat_s else "")
  )
  text = table(rows, header)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text)


if __name__ == "__main__":
  main()
