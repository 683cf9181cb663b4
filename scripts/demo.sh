#!/usr/bin/env bash
# The whole pipeline on the embedded default: a tiny random Qwen3-VL and synthetic clips in the
# real dataset layout. No GPU, no hub. `make demo` runs this; DEMO_* variables change it.
#
# It fine-tunes on video + 1 s of ego history (the model the field would train), and with
# DEMO_ABLATION=1 (`make ablation`) also on the front camera's video alone and on the front and
# both cross cameras' video, on the same clips, scored on the same test segments: what each
# input is worth, in one table with zero-shot and the four baselines.
#
# What it takes for a tiny model trained from random weights to learn the numbers (not just the
# answer's format) in minutes on 2 cores: 24 clips at 320x180 with about 90 visual tokens per
# segment (VIDEO_*_PIXELS below), all of the model fine-tuned (LoRA on random weights learns the
# format but not the values in this time), 300 steps of 4 samples at a learning rate of 3e-3.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
DEMO_DIR="${DEMO_DIR:-demo_output}"
DEMO_CLIPS="${DEMO_CLIPS:-24}"          # synthetic 20 s clips (19 segments each)
DEMO_CLIP_SECONDS="${DEMO_CLIP_SECONDS:-20}"
DEMO_MAX_STEPS="${DEMO_MAX_STEPS:-300}" # optimiser steps of 4 samples, each model
DEMO_LR="${DEMO_LR:-3e-3}"
DEMO_EVAL_SAMPLES="${DEMO_EVAL_SAMPLES:-32}"
DEMO_ABLATION="${DEMO_ABLATION:-0}"     # 1: also fine-tune on video alone, and on three cameras
DEMO_HISTORY_SECONDS="${DEMO_HISTORY_SECONDS:-1}"
FRONT=camera_front_wide_120fov
CAMERAS=("$FRONT")
[ "$DEMO_ABLATION" = 1 ] && CAMERAS+=(camera_cross_left_120fov camera_cross_right_120fov)
# A smaller per-frame pixel budget than the default (128..256 x 32x32) keeps 2 CPU cores fast;
# the cross cameras get 8 frames at the same size (their default: 8 frames of up to 64 x 32x32).
export VIDEO_MIN_PIXELS="${VIDEO_MIN_PIXELS:-$((1 * 32 * 32))}"
export VIDEO_MAX_PIXELS="${VIDEO_MAX_PIXELS:-$((8 * 32 * 32))}"
export VIDEO_SIDE_MIN_PIXELS="${VIDEO_SIDE_MIN_PIXELS:-$((1 * 32 * 32))}"
export VIDEO_SIDE_MAX_PIXELS="${VIDEO_SIDE_MAX_PIXELS:-$((8 * 32 * 32))}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

step() { printf '\n== %s\n' "$*"; }
rm -rf "$DEMO_DIR" && mkdir -p "$DEMO_DIR"
DATA="$DEMO_DIR/datasets"

step "1/8 tiny Qwen3-VL built in code (stands in for MODEL_PATH=Qwen/Qwen3-VL-4B-Instruct)"
"$PYTHON" scripts/make_tiny_model.py --output-dir "$DEMO_DIR/tiny_model"

step "2/8 synthetic clips in the PhysicalAI-AV layout, with their calibration, cameras: ${CAMERAS[*]} (stands in for download_dataset.py)"
"$PYTHON" scripts/make_synthetic_data.py --output-dir "$DEMO_DIR/physical_ai_data" \
  --num-clips "$DEMO_CLIPS" --clip-seconds "$DEMO_CLIP_SECONDS" --width 320 --height 180 --seed 0 \
  --cameras "${CAMERAS[@]}"

step "3/8 1-second segments with next-second labels, each with its cameras' frames of that second"
"$PYTHON" scripts/prepare_video_segments.py --data-dir "$DEMO_DIR/physical_ai_data" \
  --output-dir "$DEMO_DIR/qwen_video_segments" --workers 2 --cameras "${CAMERAS[@]}"

step "4/8 Hugging Face datasets in the official split of the clip index, then the training JSON: front video + ${DEMO_HISTORY_SECONDS} s of ego history at 10 Hz in the prompt$([ "$DEMO_ABLATION" = 1 ] && echo ', front video alone, front and cross cameras'"'"' video')"
variants=(history)
[ "$DEMO_ABLATION" = 1 ] && variants=(video cameras history)
for variant in "${variants[@]}"; do
  args=(--cameras "$FRONT")
  [ "$variant" = history ] && args+=(--ego-history "$DEMO_HISTORY_SECONDS" --history-hz 10)
  [ "$variant" = cameras ] && args=(--cameras "${CAMERAS[@]}")
  "$PYTHON" scripts/prepare_huggingface_dataset.py --segments-dir "$DEMO_DIR/qwen_video_segments" \
    --output-dir "$DATA/$variant" "${args[@]}"
  "$PYTHON" scripts/convert_to_training_format.py --input-dir "$DATA/$variant" \
    --output-dir "$DATA/${variant}_training"
done

step "5/8 full fine-tuning through the real launcher: $(printf '%s ' "${variants[@]}")"
for variant in "${variants[@]}"; do
  echo "-- $variant"
  MODEL_PATH="$DEMO_DIR/tiny_model" DATASETS="$DATA/${variant}_training/train.json" \
    OUTPUT_DIR="$DEMO_DIR/checkpoints/$variant" MAX_STEPS="$DEMO_MAX_STEPS" BATCH_SIZE=4 GRAD_ACCUM=1 \
    LR="$DEMO_LR" TUNE_MM_VISION=True DEEPSPEED_CONFIG= SAVE_STEPS="$DEMO_MAX_STEPS" \
    DATALOADER_WORKERS=2 LOGGING_STEPS=50 ./train_physical_ai.sh
done

step "6/8 evaluation of the base model (zero-shot) and each fine-tune against the baselines, with a gallery of paths drawn on the camera"
evaluate() {  # name, model, test set
  "$PYTHON" scripts/evaluate.py --model-path "$2" --test-json "$DATA/$3_training/test.json" \
    --max-samples "$DEMO_EVAL_SAMPLES" --batch-size 8 --output-dir "$DEMO_DIR/eval/$1"
}
evaluate zero-shot "$DEMO_DIR/tiny_model" history
for variant in "${variants[@]}"; do
  evaluate "$variant" "$DEMO_DIR/checkpoints/$variant" "$variant"
done

step "7/8 predict one test segment with its ego history, drawing the path on its last frame"
HISTORY_FILE="$DEMO_DIR/predict_history.json"
CLIP=$("$PYTHON" - "$DATA/history_training/test.json" "$HISTORY_FILE" <<'PY'
import json, sys
from qwenvl.data.samples import load_samples
sample = load_samples([sys.argv[1]])[0]
pairs = list(zip(sample["history_speed"], sample["history_curvature"], strict=True))
json.dump(pairs, open(sys.argv[2], "w"))
print(sample["video"])
PY
)
"$PYTHON" scripts/predict.py --model-path "$DEMO_DIR/checkpoints/history" "$CLIP" \
  --ego-history "$HISTORY_FILE" --render "$DEMO_DIR/predict_render"
if [ "$DEMO_ABLATION" = 1 ]; then
  echo "-- the three-camera model: the front clip, and each cross camera's with --camera"
  mapfile -t VIEWS < <("$PYTHON" - "$DATA/cameras_training/test.json" <<'PY'
import json, sys
from qwenvl.data.samples import load_samples
sample = load_samples([sys.argv[1]])[0]
print(sample["video"])
for camera, video in zip(sample["cameras"][1:], sample["extra_videos"], strict=True):
    print(f"{camera}={video}")
PY
  )
  "$PYTHON" scripts/predict.py --model-path "$DEMO_DIR/checkpoints/cameras" "${VIEWS[0]}" \
    --camera "${VIEWS[1]}" --camera "${VIEWS[2]}"
fi

step "8/8 zero-shot and fine-tuned against the baselines, on the same test segments"
names=(zero-shot="$DEMO_DIR/eval/zero-shot")
[ "$DEMO_ABLATION" = 1 ] && names+=(video-only="$DEMO_DIR/eval/video" \
  video-3-cameras="$DEMO_DIR/eval/cameras")
names+=(video+history="$DEMO_DIR/eval/history")
"$PYTHON" scripts/compare_evaluations.py "${names[@]}" --output "$DEMO_DIR/eval/comparison.md"
echo
echo "reports: $DEMO_DIR/eval/comparison.md (every model, the same clips side by side), $DEMO_DIR/eval/*/report.md"
echo "the path drawn on a clip: $DEMO_DIR/predict_render/"
