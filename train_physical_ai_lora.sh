#!/usr/bin/env bash
# LoRA fine-tuning of Qwen3-VL on 1-second driving clips. Every setting is an env var:
#   MODEL_PATH=Qwen/Qwen3-VL-4B-Instruct NPROC_PER_NODE=2 ./train_physical_ai_lora.sh
# Settings shared with the full launcher (data, video, GPUs, nodes) are in scripts/launch_common.sh.
set -euo pipefail
cd "$(dirname "$0")"

# --- LoRA defaults (the seed guide's)
OUTPUT_DIR="${OUTPUT_DIR:-checkpoints/physical_ai_driving_lora}"
EPOCHS="${EPOCHS:-5}"
BATCH_SIZE="${BATCH_SIZE:-4}"
GRAD_ACCUM="${GRAD_ACCUM:-2}"
LR="${LR:-2e-4}"
SAVE_TOTAL_LIMIT="${SAVE_TOTAL_LIMIT:-3}"
LORA_R="${LORA_R:-64}"
LORA_ALPHA="${LORA_ALPHA:-128}"
LORA_DROPOUT="${LORA_DROPOUT:-0.05}"
DEEPSPEED_CONFIG="${DEEPSPEED_CONFIG:-}"              # optional for LoRA, e.g. zero3.json
QUANT="${QUANT:-}"                                    # 4bit: QLoRA (NF4, CUDA, bitsandbytes)

source scripts/launch_common.sh

print_settings "${COMMON_SETTINGS[@]}" LORA_R LORA_ALPHA LORA_DROPOUT QUANT
[ -n "$QUANT" ] && check_quantization "$QUANT"
exec "${TORCHRUN[@]}" scripts/train.py "${COMMON_ARGS[@]}" --lora_enable True \
  --lora_r "$LORA_R" --lora_alpha "$LORA_ALPHA" --lora_dropout "$LORA_DROPOUT" \
  ${QUANT:+--quantization "$QUANT"} "$@"
