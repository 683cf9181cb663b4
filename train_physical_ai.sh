#!/usr/bin/env bash
# Full fine-tuning of Qwen3-VL with DeepSpeed ZeRO-3. Every setting is an environment variable;
# `./train_physical_ai.sh --help` lists them with their defaults, which live in
# qwenvl/train/config.py (the "full" preset). For example:
#   NPROC_PER_NODE=2 DEEPSPEED_CONFIG=zero3_offload.json ./train_physical_ai.sh
# Relative paths in the settings are the caller's folder's. Extra arguments go to train.py.
set -euo pipefail
PROJECT="$(cd "$(dirname "$0")" && pwd)"
PYTHON="${PYTHON:-$([ -x "$PROJECT/.venv/bin/python" ] && echo "$PROJECT/.venv/bin/python" || echo python3)}"
exec "$PYTHON" -m qwenvl.train.launch full "$@"
