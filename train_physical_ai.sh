#!/usr/bin/env bash
# Full fine-tuning of Qwen3-VL with DeepSpeed ZeRO-3. Every setting is an env var:
#   NPROC_PER_NODE=2 ./train_physical_ai.sh
set -euo pipefail
cd "$(dirname "$0")"

# --- what to train on and where it goes
MODEL_PATH="${MODEL_PATH:-Qwen/Qwen3-VL-4B-Instruct}"
DATASETS="${DATASETS:-physical_ai_driving}"          # registry names or train.json paths, name%pct
EVAL_DATASETS="${EVAL_DATASETS:-}"                    # e.g. physical_ai_driving_val; empty = no eval
OUTPUT_DIR="${OUTPUT_DIR:-checkpoints/physical_ai_driving}"

# --- optimisation (the seed guide's full fine-tuning defaults)
EPOCHS="${EPOCHS:-3}"
BATCH_SIZE="${BATCH_SIZE:-2}"
GRAD_ACCUM="${GRAD_ACCUM:-4}"
LR="${LR:-1e-5}"
MAX_STEPS="${MAX_STEPS:--1}"                          # > 0 overrides EPOCHS
SAVE_STEPS="${SAVE_STEPS:-100}"
SAVE_TOTAL_LIMIT="${SAVE_TOTAL_LIMIT:-2}"
SEED="${SEED:-42}"
TUNE_MM_VISION="${TUNE_MM_VISION:-False}"
TUNE_MM_MLP="${TUNE_MM_MLP:-True}"
TUNE_MM_LLM="${TUNE_MM_LLM:-True}"
MM_PROJECTOR_LR="${MM_PROJECTOR_LR:-}"                # optional per-module learning rates
VISION_TOWER_LR="${VISION_TOWER_LR:-}"
MODEL_MAX_LENGTH="${MODEL_MAX_LENGTH:-8192}"
DEEPSPEED_CONFIG="${DEEPSPEED_CONFIG-zero3.json}"     # zero3_offload.json offloads to CPU; "" = none
REPORT_TO="${REPORT_TO:-none}"                        # none, tensorboard or wandb
RESUME="${RESUME:-1}"                                 # 0 = start fresh even if checkpoints exist
LOGGING_STEPS="${LOGGING_STEPS:-1}"
DATALOADER_WORKERS="${DATALOADER_WORKERS:-4}"

# --- video settings (per frame; Qwen3-VL spends one token per 32x32 pixels per 2 frames)
VIDEO_FPS="${VIDEO_FPS:-30}"
VIDEO_MIN_FRAMES="${VIDEO_MIN_FRAMES:-16}"
VIDEO_MAX_FRAMES="${VIDEO_MAX_FRAMES:-32}"
VIDEO_MIN_PIXELS="${VIDEO_MIN_PIXELS:-$((128 * 32 * 32))}"
VIDEO_MAX_PIXELS="${VIDEO_MAX_PIXELS:-$((256 * 32 * 32))}"

# --- processes: one per GPU (1 on CPU), several nodes through NNODES / NODE_RANK
source scripts/launch_common.sh

ARGS=(
  --model_name_or_path "$MODEL_PATH" --dataset_use "$DATASETS" --eval_dataset_use "$EVAL_DATASETS"
  --output_dir "$OUTPUT_DIR" --tune_mm_vision "$TUNE_MM_VISION"
  --tune_mm_mlp "$TUNE_MM_MLP" --tune_mm_llm "$TUNE_MM_LLM" --num_train_epochs "$EPOCHS"
  --max_steps "$MAX_STEPS" --per_device_train_batch_size "$BATCH_SIZE"
  --per_device_eval_batch_size "$BATCH_SIZE" --gradient_accumulation_steps "$GRAD_ACCUM"
  --learning_rate "$LR" --weight_decay 0.0 --lr_scheduler_type cosine --warmup_steps 0.03
  --logging_steps "$LOGGING_STEPS" --save_strategy steps --save_steps "$SAVE_STEPS"
  --save_total_limit "$SAVE_TOTAL_LIMIT" --seed "$SEED" --model_max_length "$MODEL_MAX_LENGTH"
  --report_to "$REPORT_TO" --dataloader_num_workers "$DATALOADER_WORKERS" --auto_resume "$AUTO_RESUME"
  --video_fps "$VIDEO_FPS" --video_min_frames "$VIDEO_MIN_FRAMES" --video_max_frames "$VIDEO_MAX_FRAMES"
  --video_min_pixels "$VIDEO_MIN_PIXELS" --video_max_pixels "$VIDEO_MAX_PIXELS"
)
[ -n "$DEEPSPEED_CONFIG" ] && ARGS+=(--deepspeed "$DEEPSPEED_CONFIG")
[ -n "$MM_PROJECTOR_LR" ] && ARGS+=(--mm_projector_lr "$MM_PROJECTOR_LR")
[ -n "$VISION_TOWER_LR" ] && ARGS+=(--vision_tower_lr "$VISION_TOWER_LR")
[ -n "$EVAL_DATASETS" ] && ARGS+=(--eval_strategy steps --eval_steps "$SAVE_STEPS")

print_settings MODEL_PATH DATASETS EVAL_DATASETS OUTPUT_DIR EPOCHS MAX_STEPS BATCH_SIZE GRAD_ACCUM LR \
  SAVE_STEPS SAVE_TOTAL_LIMIT SEED TUNE_MM_VISION TUNE_MM_MLP TUNE_MM_LLM MM_PROJECTOR_LR VISION_TOWER_LR \
  MODEL_MAX_LENGTH DEEPSPEED_CONFIG REPORT_TO RESUME VIDEO_FPS VIDEO_MIN_FRAMES VIDEO_MAX_FRAMES \
  VIDEO_MIN_PIXELS VIDEO_MAX_PIXELS NPROC_PER_NODE NNODES NODE_RANK MASTER_ADDR MASTER_PORT
exec "${TORCHRUN[@]}" scripts/train.py "${ARGS[@]}" "$@"
