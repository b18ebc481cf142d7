#!/usr/bin/env bash
# Idempotent set-up: .venv with the project and its test extras, git and DVC initialised.
# A second run reuses what is there (the install is skipped while pyproject.toml is unchanged).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
EXTRAS=${EXTRAS:-test}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=".venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)-${EXTRAS//,/_}"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  # torch==2.13.* comes from the local CPU wheel; a looser spec would pull a CUDA build.
  .venv/bin/python -m pip install --quiet -e ".[${EXTRAS}]"
  # Dagster's Kubernetes library, for deploy/k8s (and its test). The newest on the index (0.29.27)
  # pins dagster 1.13.27, which caps protobuf below 7 and so breaks sentencepiece's generated
  # code (the tokenizer stage); it runs with the current dagster 1.13, so it goes in without its
  # pin (its other dependencies are in pyproject.toml).
  .venv/bin/python -m pip install --quiet --no-deps "dagster-k8s==0.29.*"
  rm -f .venv/.installed-*
  touch "$stamp"
fi
if [ ! -d .git ]; then
  git init -q
fi
if [ ! -f .dvc/config ]; then
  .venv/bin/dvc init -q
fi
echo "setup: ok ($(.venv/bin/python --version), $(.venv/bin/dvc --version | head -1) dvc)"
