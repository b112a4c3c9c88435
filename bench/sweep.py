"""A recipe sweep chosen on validation (issue 23, section 1): one train.py run per variant, sequential and
resumable, then a table ranked by each run's own best validation mAP (the queries never choose).

  python bench/sweep.py --config configs/cifar10_mobilenet_v2_cpu.py:48 --workdir workdir/sweep \
    --common "data.manual_dir=DIR model.pretrained=torchvision:mobilenet_v2" \
    --variant "sgd_0.01=optim.name=sgd optim.lr=0.01" --variant "adam_1e-3=optim.name=adam optim.lr=0.001" \
    --out bench/results/sweep.md

Each variant is `name=key=value key=value …` (config overrides, as train.py's --config.key=value; a key
given twice, in --common and the variant, is an error: give it in one place). A finished
run (its metrics.json exists) is not trained again. The table holds, per run: the overrides, the best
validation mAP and its step, the validation curve (to see the plateau), and the query metrics of the
best-by-validation checkpoint (mAP@all, P@H≤2, constant bits, bit entropy) — reported, never used to choose.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_variant(text: str) -> tuple[str, list[str]]:
  """NAME=key=value key=value …; split at whitespace only (quotes stay part of a value, so a Python literal
  such as loss.extra_terms=(('bit_balance',0.03),) passes as written; no spaces inside a value). NAME= alone
  is the config as it is."""
  name, sep, rest = text.partition("=")
  if not name or not sep:
    raise SystemExit(f"--variant {text!r}: expected NAME=[key=value ...]")
  return name, rest.split()


def train(args, name: str, overrides: list[str]) -> str:
  run = os.path.join(args.workdir, name)
  if os.path.exists(os.path.join(run, "metrics.json")):
    return run
  cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--config", args.config, "--workdir", run]
  cmd += [f"--config.{o}" for o in [*args.common.split(), *overrides]]
  os.makedirs(args.workdir, exist_ok=True)
  log = os.path.join(args.workdir, f"{name}.log")
  print(f"[sweep] {name}: {' '.join(map(shlex.quote, cmd))}", flush=True)
  t0 = time.perf_counter()
  with open(log, "w") as f:
    rc = subprocess.call(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
  if rc != 0:
    raise SystemExit(f"[sweep] {name} failed (rc {rc}); see {log}")
  with open(os.path.join(run, "sweep_wall.json"), "w") as f:
    json.dump({"wall_s": time.perf_counter() - t0}, f)
  return run


def summarise(name: str, overrides: list[str], run: str) -> dict:
  logs = [json.loads(x) for x in open(os.path.join(run, "metrics.jsonl"))]
  curve = [(r["step"], r["val_map"]) for r in logs if "val_map" in r]
  res = json.load(open(os.path.join(run, "metrics.json")))
  m, k = res["metrics"], res["key"]
  wall = os.path.join(run, "sweep_wall.json")
  best_step, best_val = max(curve, key=lambda sv: (sv[1], -sv[0])) if curve else (0, float("nan"))
  return {
    "name": name,
    "overrides": " ".join(overrides),
    "best_val_map": best_val,
    "best_step": best_step,
    "curve": curve,
    "map": m["map"],
    "p_h2": m.get("precision_radius", float("nan")),
    "constant_bits": m.get("constant_bits"),
    "bit_entropy": m.get("bit_entropy"),
    "key": k,
    "wall_s": json.load(open(wall))["wall_s"] if os.path.exists(wall) else float("nan"),
  }


def table(rows: list[dict], choose: bool = True) -> str:
  rows = sorted(rows, key=lambda r: -r["best_val_map"])
  k = rows[0]["key"]
  out = [
    f"Protocol {k['protocol']}, split hash {str(k['split_hash'])[:12]}, {k['bits']} bits, backbone "
    f"{k['backbone']}, query metric mAP@{k['R_label']} (ties: {k['tie_break']}). "
    + (
      "Chosen by the best validation mAP (first row); query columns are reported, never used to choose."
      if choose
      else "Ranked by the best validation mAP of each run (its checkpoint is the one scored)."
    ),
    "",
    "| variant | overrides | best val mAP (step) | mAP@all | P@H≤2 | constant bits | bit entropy | wall (s) |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for i, r in enumerate(rows):
    mark = " **(chosen)**" if i == 0 and choose else ""
    out.append(
      f"| {r['name']}{mark} | `{r['overrides']}` | {r['best_val_map']:.4f} ({r['best_step']}) | {r['map']:.4f} | "
      f"{r['p_h2']:.4f} | {r['constant_bits']} | {r['bit_entropy']:.3f} | {r['wall_s']:.0f} |"
    )
  out += ["", "Validation curves (step: val mAP):", ""]
  for r in rows:
    out.append(f"- {r['name']}: " + ", ".join(f"{s}: {v:.3f}" for s, v in r["curve"]))
  return "\n".join(out) + "\n"


def paired_table(rows: list[dict], a: str, b: str) -> str:
  """Method `a` minus method `b`, paired by seed, per group, for variants named GROUP_METHOD_sSEED."""
  runs: dict[tuple[str, str], dict[int, float]] = {}
  for r in rows:
    group, method, seed = r["name"].rsplit("_", 2)
    runs.setdefault((group, method), {})[int(seed.removeprefix("s"))] = r["map"]
  out = [
    f"| group | {a} mAP@all mean ± std | {b} mAP@all mean ± std | seeds | gap ({a} − {b}) mean ± std | "
    "spread (larger std) | gap > spread |",
    "|---|---|---|---|---|---|---|",
  ]
  for group in sorted({g for g, _ in runs}, key=lambda g: (len(g), g)):
    ra, rb = runs.get((group, a), {}), runs.get((group, b), {})
    seeds = sorted(set(ra) & set(rb))
    if not seeds:
      continue
    va, vb = np.array([ra[s] for s in seeds]), np.array([rb[s] for s in seeds])
    gap = va - vb
    sd = lambda v: float(v.std(ddof=1)) if len(v) > 1 else float("nan")
    spread = max(sd(va), sd(vb))
    out.append(
      f"| {group} | {va.mean():.4f} ± {sd(va):.4f} | {vb.mean():.4f} ± {sd(vb):.4f} | "
      f"{','.join(map(str, seeds))} | {gap.mean():+.4f} ± {sd(gap):.4f} | {spread:.4f} | "
      f"{'yes' if len(seeds) > 1 and gap.mean() > spread else 'no'} |"
    )
  return "\n".join(out) + "\n"


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True)
  p.add_argument("--workdir", required=True)
  p.add_argument("--common", default="", help="overrides for every variant (key=value ...)")
  p.add_argument("--variant", action="append", default=[], help="NAME=key=value [key=value ...]")
  p.add_argument("--out", default="")
  p.add_argument("--header", default="", help="a line put above the table (the command, the machine)")
  p.add_argument(
    "--pair",
    action="append",
    default=[],
    help="A,B: also a table of method A minus B paired by seed (variants GROUP_METHOD_sSEED); repeatable",
  )
  args = p.parse_args()
  variants = [parse_variant(v) for v in args.variant]
  if not variants:
    raise SystemExit("give at least one --variant")
  rows = [summarise(n, o, train(args, n, o)) for n, o in variants]
  text = (args.header + "\n\n" if args.header else "") + table(rows, choose=not args.pair)
  for pair in args.pair:
    a, b = pair.split(",")
    text += "\n" + paired_table(rows, a, b)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text)


if __name__ == "__main__":
  main()
