"""An extraction killed part-way (SIGKILL, in a subprocess) resumes from its saved chunks: the rerun computes
only the rows that were not saved and ends with the same cache entry as an uninterrupted extraction."""

import glob
import logging
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np

from ssdh_jax import feature_cache
from ssdh_jax.data import pipeline
from tests.test_freeze import _mnv2_digits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHUNK = 128  # rows per saved chunk in this test; batches of 64


def _prefix_fn(calls):
  import jax.numpy as jnp

  def fn(images):
    calls.append(len(images))
    return jnp.asarray(images, jnp.float32).mean(axis=(1, 2)) * 2.0

  return fn


def _extract(c, splits, cache_dir, calls):
  batches = lambda ex: pipeline.eval_batches(ex, c, 64)
  return feature_cache.load_or_extract(c, 5, splits, _prefix_fn(calls), batches, cache_dir)


def test_killed_extraction_resumes_from_saved_chunks(tmp_path, monkeypatch):
  cache_dir = str(tmp_path / "cache")
  kill_after = 5  # batches of 64: chunks 0 and 1 (rows 0-255) are saved before the kill
  script = textwrap.dedent(f"""
    import os, signal, sys
    sys.path.insert(0, {ROOT!r})
    import jax.numpy as jnp
    from ssdh_jax import feature_cache
    from ssdh_jax.data import pipeline
    from tests.test_freeze import _mnv2_digits
    feature_cache.CHUNK_ROWS = {CHUNK}
    c = _mnv2_digits(trainable="features_15")
    splits, _ = pipeline.load_splits(c, {str(tmp_path / "run")!r})
    n = [0]
    def prefix_fn(images):
      n[0] += 1
      if n[0] > {kill_after}:
        os.kill(os.getpid(), signal.SIGKILL)
      return jnp.asarray(images, jnp.float32).mean(axis=(1, 2)) * 2.0
    feature_cache.load_or_extract(
      c, 5, splits, prefix_fn, lambda ex: pipeline.eval_batches(ex, c, 64), {cache_dir!r})
  """)
  proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
  saved = sorted(glob.glob(os.path.join(cache_dir, "*.parts", "rows-*.npy")))
  assert [os.path.basename(p) for p in saved] == [
    "rows-000000000-000000128.npy",
    "rows-000000128-000000256.npy",
  ]
  assert not glob.glob(os.path.join(cache_dir, "*.npy")), "no cache entry from a killed extraction"

  monkeypatch.setattr(feature_cache, "CHUNK_ROWS", CHUNK)
  c = _mnv2_digits(trainable="features_15")
  splits, _ = pipeline.load_splits(c, str(tmp_path / "run"))
  total = len(feature_cache.pool_images(splits))
  calls = []
  view, rec = _extract(c, splits, cache_dir, calls)
  assert not rec["hit"] and sum(calls) == total - 2 * CHUNK  # only the rows that were not saved
  assert not glob.glob(os.path.join(cache_dir, "*.parts")), "chunks removed once the entry is written"

  fresh_calls = []
  fresh, _ = _extract(c, splits, str(tmp_path / "fresh"), fresh_calls)
  assert sum(fresh_calls) == total
  for name in splits:
    np.testing.assert_array_equal(view[name].images, fresh[name].images)
  calls.clear()
  _, again = _extract(c, splits, cache_dir, calls)
  assert again["hit"] and not calls


def test_damaged_chunk_is_recomputed(tmp_path, monkeypatch, caplog):
  monkeypatch.setattr(feature_cache, "CHUNK_ROWS", CHUNK)
  c = _mnv2_digits(trainable="features_15")
  splits, _ = pipeline.load_splits(c, str(tmp_path / "run"))
  pool = feature_cache.pool_images(splits)
  chunk_dir = str(tmp_path / "parts")
  os.makedirs(chunk_dir)
  np.save(os.path.join(chunk_dir, "rows-000000000-000000128.npy"), np.zeros((3, 3), np.float32))  # wrong rows
  with open(os.path.join(chunk_dir, "rows-000000128-000000256.npy"), "wb") as f:
    f.write(b"\x93NUMPY garbage")
  calls = []
  batches = lambda ex: pipeline.eval_batches(ex, c, 64)
  with caplog.at_level(logging.WARNING):
    out = feature_cache.extract(_prefix_fn(calls), pool, batches, progress=False, chunk_dir=chunk_dir)
  assert sum(calls) == len(pool) and "computing it again" in caplog.text
  ref = feature_cache.extract(_prefix_fn([]), pool, batches, progress=False)
  np.testing.assert_array_equal(out, ref)


def test_extraction_without_a_bar_reports_rate_and_eta_on_stderr(tmp_path, capsys):
  c = _mnv2_digits(trainable="features_15")
  splits, _ = pipeline.load_splits(c, str(tmp_path / "run"))
  pool = feature_cache.pool_images(splits)
  batches = lambda ex: pipeline.eval_batches(ex, c, 512)
  feature_cache.extract(_prefix_fn([]), pool, batches, progress=False, log_every_s=0.0)
  lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("frozen prefix:")]
  assert len(lines) == 4 and lines[-1].startswith(f"frozen prefix: {len(pool)}/{len(pool)} images")
  assert "images/s, ETA" in lines[0]
