"""What a train-step comparison reports: MFU and the loss's share of the step per side, and the Markdown
tables (every side; the best PyTorch configuration against JAX). Used by bench_train and the GPU suite."""

from __future__ import annotations

from typing import Any

from bench import harness

# Dense peak TFLOP/s (SXM parts) by device-kind substring: {compute dtype: peak}.
PEAK_TFLOPS = {
  "H100": {"bfloat16": 989.0, "float32": 67.0},
  "H200": {"bfloat16": 989.0, "float32": 67.0},
  "A100": {"bfloat16": 312.0, "float32": 19.5},
}
SIDE_COLUMNS = (
  "backbone", "batch", "dtype", "side", "t_side / t_JAX median (IQR; min–max), n", "step ms (median)",
  "images/s", "warm-up s", "compile s", "model GFLOP/step", "XLA step GFLOP", "MFU", "loss share",
)  # fmt: skip
BEST_COLUMNS = (
  "backbone", "dtype", "best PyTorch configuration (highest images/s)",
  "t_best / t_JAX median (IQR; min–max), n", "JAX images/s", "best PyTorch images/s",
)  # fmt: skip


def _peak(kind: str, dtype: str, override: list[float] | None) -> float | None:
  if override:
    return override[1 if dtype == "bfloat16" and len(override) > 1 else 0]
  for sub, peaks in PEAK_TFLOPS.items():
    if sub in kind:
      return peaks[dtype]
  return None


def derive(results: list[dict[str, Any]], device_kind: str, peak_override: list[float] | None) -> None:
  """MFU and loss share per row; PyTorch rows take the JAX FLOP counts of the same group."""
  for g in results:
    jax_row = next((r for r in g["rows"] if r["framework"] == "jax"), {})
    for r in g["rows"]:
      for key in ("flops", "model_flops"):
        if r.get(key) is None:
          r[key] = jax_row.get(key)
      if "step_s" not in r:
        continue
      flops = r.get("model_flops")
      peak = _peak(device_kind, g["dtype"], peak_override)
      r["mfu"] = flops / r["step_s"] / (peak * 1e12) if flops and peak else None
      r["loss_share"] = r["loss_ms"] / (1e3 * r["step_s"]) if r.get("loss_ms") else None


def markdown_tables(results: list[dict[str, Any]], header: str) -> list[str]:
  """The per-side table and the best-configuration summary (Markdown lines)."""
  fmt = lambda v, f: "n/a" if v is None else format(v, f)
  pct = lambda v: "n/a" if v is None else (f"{100 * v:.1f}%" if v >= 0.01 else f"{100 * v:.2g}%")
  lines = [f"Paired, interleaved: {header}.", "", *harness.md_head(SIDE_COLUMNS, "lrlllrrrrrrrr")]
  for g in results:
    for r in g["rows"]:
      head = f"| {g['backbone']} | {g['batch']} | {g['dtype']} | {r['label']}"
      if "error" in r:
        lines.append(f"{head} | {r['error']} | | | | | | | | |")
        continue
      ratio = "1 (reference)" if r["framework"] == "jax" else r.get("ratio_summary", "n/a (no JAX side)")
      best = " **best PyTorch**" if r["key"] == g["best_torch"] else ""
      mflops, xflops = r.get("model_flops"), r.get("flops")
      lines.append(
        f"{head}{best} | {ratio} | {1e3 * r['step_s']:.1f} | {r['images_s']:,.1f} | {r.get('warmup_s', 0):.0f} | "
        f"{fmt(r.get('compile_s'), '.1f')} | {fmt(mflops and mflops / 1e9, ',.1f')} | "
        f"{fmt(xflops and xflops / 1e9, ',.1f')} | {pct(r.get('mfu'))} | {pct(r.get('loss_share'))} |"
      )
  lines += ["", *harness.md_head(BEST_COLUMNS, "llllrr")]
  for g in results:
    by = {r["key"]: r for r in g["rows"]}
    jax_ips = by.get("jax", {}).get("images_s")
    best = by.get(g["best_torch"] or "", {})
    lines.append(
      f"| {g['backbone']} | {g['dtype']} | {g['best_torch_label'] or 'none ran'} | "
      f"{g.get('jax_vs_best_summary', 'n/a')} | {fmt(jax_ips, ',.1f')} | {fmt(best.get('images_s'), ',.1f')} |"
    )
  return lines
