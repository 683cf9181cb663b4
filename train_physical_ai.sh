#!/usr/bin/env bash
# Full fine-tuning of Qwen3-VL with DeepSpeed ZeRO-3. Every setting is an env var:
#   NPROC_PER_NODE=2 ./train_physical_ai.sh
# Settings shared with the LoRA launcher (data, video, GPUs, nodes) are in scripts/launch_common.sh.
# Relative paths in the settings are the caller's folder's. Extra arguments go to train.py.
set -euo pipefail
PROJECT="$(cd "$(dirname "$0")" && pwd)"

# --- full fine-tuning defaults (the seed guide's)
OUTPUT_DIR="${OUTPUT_DIR:-checkpoints/physical_ai_driving}"
EPOCHS="${EPOCHS:-3}"
BATCH_SIZE="${BATCH_SIZE:-2}"
GRAD_ACCUM="${GRAD_ACCUM:-4}"
LR="${LR:-1e-5}"
SAVE_TOTAL_LIMIT="${SAVE_TOTAL_LIMIT:-2}"
MM_PROJECTOR_LR="${MM_PROJECTOR_LR:-}"                # optional per-module learning rates
VISION_TOWER_LR="${VISION_TOWER_LR:-}"
DEEPSPEED_CONFIG="${DEEPSPEED_CONFIG-zero3.json}"     # zero3_offload.json offloads to CPU; "" = none

source "$PROJECT/scripts/launch_common.sh"

SETTINGS=("${COMMON_SETTINGS[@]}" MM_PROJECTOR_LR VISION_TOWER_LR)
run_preflight full "${SETTINGS[@]}"
print_settings "${SETTINGS[@]}"
EXTRA_ARGS=()
[ -n "$MM_PROJECTOR_LR" ] && EXTRA_ARGS+=(--mm_projector_lr "$MM_PROJECTOR_LR")
[ -n "$VISION_TOWER_LR" ] && EXTRA_ARGS+=(--vision_tower_lr "$VISION_TOWER_LR")
torchrun_train "${EXTRA_ARGS[@]}" "$@"
