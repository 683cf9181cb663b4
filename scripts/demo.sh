#!/usr/bin/env bash
# The whole pipeline on the embedded default: a tiny random Qwen3-VL and synthetic clips in the
# real dataset layout. No GPU, no hub. `make demo` runs this; DEMO_* variables shorten it.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
DEMO_DIR="${DEMO_DIR:-demo_output}"
DEMO_CLIPS="${DEMO_CLIPS:-8}"           # synthetic 20 s clips (19 segments each)
DEMO_CLIP_SECONDS="${DEMO_CLIP_SECONDS:-20}"
DEMO_MAX_STEPS="${DEMO_MAX_STEPS:-60}"  # LoRA optimiser steps on the tiny model
DEMO_EVAL_SAMPLES="${DEMO_EVAL_SAMPLES:-16}"
# A smaller per-frame pixel budget than the default (128..256 x 32x32) keeps 2 CPU cores fast.
export VIDEO_MIN_PIXELS="${VIDEO_MIN_PIXELS:-$((16 * 32 * 32))}"
export VIDEO_MAX_PIXELS="${VIDEO_MAX_PIXELS:-$((64 * 32 * 32))}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

step() { printf '\n== %s\n' "$*"; }
rm -rf "$DEMO_DIR" && mkdir -p "$DEMO_DIR"

step "1/8 tiny Qwen3-VL built in code (stands in for MODEL_PATH=Qwen/Qwen3-VL-4B-Instruct)"
"$PYTHON" scripts/make_tiny_model.py --output-dir "$DEMO_DIR/tiny_model"

step "2/8 synthetic clips in the PhysicalAI-AV layout (stands in for download_dataset.py)"
"$PYTHON" scripts/make_synthetic_data.py --output-dir "$DEMO_DIR/physical_ai_data" \
  --num-clips "$DEMO_CLIPS" --clip-seconds "$DEMO_CLIP_SECONDS" --width 640 --height 360 --seed 0

step "3/8 1-second segments with next-second labels"
"$PYTHON" scripts/prepare_video_segments.py --data-dir "$DEMO_DIR/physical_ai_data" \
  --output-dir "$DEMO_DIR/qwen_video_segments" --workers 2

step "4/8 Hugging Face dataset in the official train/val/test split of the clip index, then the training JSON"
"$PYTHON" scripts/prepare_huggingface_dataset.py --segments-dir "$DEMO_DIR/qwen_video_segments" \
  --output-dir "$DEMO_DIR/qwen_video_dataset"
"$PYTHON" scripts/convert_to_training_format.py --input-dir "$DEMO_DIR/qwen_video_dataset" \
  --output-dir "$DEMO_DIR/qwen_video_dataset_training"

step "5/8 LoRA fine-tuning through the real launcher"
MODEL_PATH="$DEMO_DIR/tiny_model" DATASETS="$DEMO_DIR/qwen_video_dataset_training/train.json" \
  OUTPUT_DIR="$DEMO_DIR/checkpoints/lora" MAX_STEPS="$DEMO_MAX_STEPS" BATCH_SIZE=4 GRAD_ACCUM=1 \
  LR=5e-3 SAVE_STEPS="$DEMO_MAX_STEPS" DATALOADER_WORKERS=2 LOGGING_STEPS=10 \
  ./train_physical_ai_lora.sh

step "6/8 evaluation of the base model (zero-shot) and the fine-tuned adapter against baselines"
TEST_JSON="$DEMO_DIR/qwen_video_dataset_training/test.json"
"$PYTHON" scripts/evaluate.py --model-path "$DEMO_DIR/tiny_model" --test-json "$TEST_JSON" \
  --max-samples "$DEMO_EVAL_SAMPLES" --batch-size 8 --output-dir "$DEMO_DIR/eval/base"
"$PYTHON" scripts/evaluate.py --model-path "$DEMO_DIR/checkpoints/lora" --test-json "$TEST_JSON" \
  --max-samples "$DEMO_EVAL_SAMPLES" --batch-size 8 --output-dir "$DEMO_DIR/eval/lora"

step "7/8 merge the adapter into a standalone model"
"$PYTHON" scripts/merge_lora.py --adapter-path "$DEMO_DIR/checkpoints/lora" \
  --output-dir "$DEMO_DIR/merged"

step "8/8 predict on one clip with the merged model"
CLIP=$(find "$DEMO_DIR/qwen_video_segments/videos" -name '*.mp4' | sort | head -n 1)
"$PYTHON" scripts/predict.py --model-path "$DEMO_DIR/merged" "$CLIP" || true

step "zero-shot and fine-tuned against the baselines (answers constrained to the answer grammar)"
"$PYTHON" scripts/compare_evaluations.py zero-shot="$DEMO_DIR/eval/base" \
  fine-tuned="$DEMO_DIR/eval/lora" --output "$DEMO_DIR/eval/comparison.md"
echo
echo "reports: $DEMO_DIR/eval/comparison.md (both models' plots), $DEMO_DIR/eval/base/report.md, $DEMO_DIR/eval/lora/report.md"
echo "merged model: $DEMO_DIR/merged"
