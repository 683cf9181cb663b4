#!/usr/bin/env bash
# LoRA fine-tuning of Qwen3-VL on 1-second driving clips. Every setting is an environment
# variable; `./train_physical_ai_lora.sh --help` lists them with their defaults, which live in
# qwenvl/train/config.py (the "lora" preset). For example:
#   MODEL_PATH=Qwen/Qwen3-VL-4B-Instruct NPROC_PER_NODE=2 ./train_physical_ai_lora.sh
# Relative paths in the settings are the caller's folder's. Extra arguments go to train.py.
set -euo pipefail
PROJECT="$(cd "$(dirname "$0")" && pwd)"
PYTHON="${PYTHON:-$([ -x "$PROJECT/.venv/bin/python" ] && echo "$PROJECT/.venv/bin/python" || echo python3)}"
exec "$PYTHON" -m qwenvl.train.launch lora "$@"
