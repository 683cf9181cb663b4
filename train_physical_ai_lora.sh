#!/usr/bin/env bash
# LoRA fine-tuning of Qwen3-VL on 1-second driving clips. Every setting is an env var:
#   MODEL_PATH=Qwen/Qwen3-VL-4B-Instruct NPROC_PER_NODE=2 ./train_physical_ai_lora.sh
# Settings shared with the full launcher (data, video, GPUs, nodes) are in scripts/launch_common.sh.
# Relative paths in the settings are the caller's folder's. Extra arguments go to train.py.
set -euo pipefail
PROJECT="$(cd "$(dirname "$0")" && pwd)"

# --- LoRA defaults (the seed guide's); LORA_R, LORA_ALPHA, LORA_DROPOUT default to
#     qwenvl.train.settings.LoraSettings (r 64, alpha 128, dropout 0.05)
OUTPUT_DIR="${OUTPUT_DIR:-checkpoints/physical_ai_driving_lora}"
EPOCHS="${EPOCHS:-5}"
BATCH_SIZE="${BATCH_SIZE:-4}"
GRAD_ACCUM="${GRAD_ACCUM:-2}"
LR="${LR:-2e-4}"
SAVE_TOTAL_LIMIT="${SAVE_TOTAL_LIMIT:-3}"
DEEPSPEED_CONFIG="${DEEPSPEED_CONFIG:-}"              # optional for LoRA, e.g. zero3.json
QUANT="${QUANT:-}"                                    # 4bit: QLoRA (NF4, CUDA, bitsandbytes)

source "$PROJECT/scripts/launch_common.sh"

SETTINGS=("${COMMON_SETTINGS[@]}" LORA_R LORA_ALPHA LORA_DROPOUT QUANT)
run_preflight lora "${SETTINGS[@]}"
print_settings "${SETTINGS[@]}"
torchrun_train --lora_enable True --lora_r "$LORA_R" --lora_alpha "$LORA_ALPHA" \
  --lora_dropout "$LORA_DROPOUT" ${QUANT:+--quantization "$QUANT"} "$@"
