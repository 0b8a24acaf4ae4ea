#!/usr/bin/env bash
# Run ON THE GPU MACHINE before run.py: installs the carried wheels into /tmp/unimed-gpu/site (no index, no
# dependency resolution: the image's torch stays), then reassembles and installs DALI if all its parts came.
# Prints what imports; run.py records versions and import errors itself, section by section.
set -uo pipefail
cd "$(dirname "$0")"
SITE=/tmp/unimed-gpu/site
mkdir -p "$SITE"
python -m pip install -q --no-index --no-deps --target "$SITE" wheels/small/*.whl || echo "setup: some small wheels failed"
D=/tmp/unimed-gpu/dali
if [ -f "$D/NAME" ]; then
  cat "$D"/part-* > "/tmp/unimed-gpu/$(cat "$D/NAME")"
  if [ "$(sha256sum "/tmp/unimed-gpu/$(cat "$D/NAME")" | cut -d' ' -f1)" = "$(cat "$D/SHA256")" ]; then
    python -m pip install -q --no-index --no-deps --target "$SITE" "/tmp/unimed-gpu/$(cat "$D/NAME")"
  else
    echo "setup: the DALI parts do not add up (a part missing?): DALI sections will say so"
  fi
fi
export PYTHONPATH="$SITE:${PYTHONPATH:-}"
python - <<'PY'
for m in ("torch", "triton", "torchvision", "composer", "streaming", "nvidia.dali", "transformers"):
    try:
        mod = __import__(m, fromlist=["__version__"]); print(f"{m:14s} {getattr(mod, '__version__', '?')}")
    except Exception as e:
        print(f"{m:14s} MISSING {type(e).__name__}: {e}")
PY
