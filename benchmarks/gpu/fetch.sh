#!/usr/bin/env bash
# Run HERE (a machine with a package index; PYVER=3.12 if the GPU image's python is 3.12 — stash.sh prints it): the wheels the lent GPU machine lacks, for benchmarks/gpu/run.py.
# The GPU image has torch 2.11, Triton and torchvision only; it reaches no index and takes 64 MiB a command.
#   small/  every pure-Python or small wheel unimed imports (one carry, well under 64 MiB)
#   dali/   the 424 MB DALI wheel cut into 56 MiB parts (one part a command, see README.md)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PY:-../../.venv/bin/python}
rm -rf wheels/small
mkdir -p wheels/small wheels/dali
# --no-deps everywhere: torch, torchvision, triton and numpy come from the image and must not be replaced.
$PY -m pip download -q --no-deps --dest wheels/small --python-version "${PYVER:-3.11}" --only-binary=:all: \
  mosaicml==0.32.1 mosaicml-streaming==0.13.0 torchmetrics==1.7.4 lightning-utilities \
  omegaconf==2.4.0 antlr4-python3-runtime coolname tabulate py-cpuinfo mosaicml-cli \
  'transformers>=4.40,<5' 'tokenizers>=0.22,<0.23' huggingface-hub safetensors regex \
  zstd xxhash zstandard pydicom pyyaml tqdm requests packaging importlib-metadata \
  filelock fsspec brotli python-snappy
if ! ls wheels/dali/part-* >/dev/null 2>&1; then
  $PY -m pip download -q --no-deps --dest wheels/dali-whole nvidia-dali-cuda120==2.4.0
  whl=$(ls wheels/dali-whole/*.whl)
  basename "$whl" > wheels/dali/NAME
  (cd wheels/dali && split -b 56m -d -a 2 "../../$whl" part-)
  sha256sum "$whl" | cut -d' ' -f1 > wheels/dali/SHA256
  rm -rf wheels/dali-whole
fi
du -sh wheels/small wheels/dali; ls wheels/dali
