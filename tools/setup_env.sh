#!/usr/bin/env bash
# Create .venv with the pinned CPU test/dev environment and cogvx installed editable (-e .),
# and make sure ffmpeg/ffprobe exist.
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
if ! command -v ffprobe >/dev/null 2>&1; then
  echo "installing ffmpeg (ffprobe is used by the tests)"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq ffmpeg >/dev/null
fi
if [ ! -x /usr/bin/chromium ]; then
  echo "installing chromium (the web page's browser test)"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements/test.txt
# cogvx itself, editable: tools/ and benchmarks/ scripts import it from any working directory.
# No build isolation: the venv's setuptools (torch requires it) builds it, with no index needed.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
# The web page (tools/web.py) has its own environment: Gradio caps pillow below the model's pin.
[ -x .venv-web/bin/python ] || "$PY" -m venv .venv-web
.venv-web/bin/python -m pip install -q --disable-pip-version-check -r requirements/web.txt
.venv-web/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
echo "environment ready: $(.venv/bin/python -c 'import torch, diffusers, cog; print("torch", torch.__version__, "diffusers", diffusers.__version__, "cog", cog.__version__)')"
