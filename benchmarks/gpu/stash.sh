#!/usr/bin/env bash
# Run ON THE GPU MACHINE, once per carried DALI part: keeps the parts outside the working tree while the
# machine stays warm (the next command's working tree replaces the carried paths).
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p /tmp/unimed-gpu/dali
cp -n wheels/dali/* /tmp/unimed-gpu/dali/ 2>/dev/null || true
ls /tmp/unimed-gpu/dali
python -V
