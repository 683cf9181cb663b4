# Shared by the two launchers (sourced after each sets its own defaults): the settings both
# take, the process layout, the Python to run, and the arguments both pass to train.py.

# --- data, model and bookkeeping
MODEL_PATH="${MODEL_PATH:-Qwen/Qwen3-VL-4B-Instruct}"
DATASETS="${DATASETS:-physical_ai_driving}"          # registry names or train.json paths, name%pct
EVAL_DATASETS="${EVAL_DATASETS:-}"                    # e.g. physical_ai_driving_val; empty = no eval
EVAL_GENERATE_SAMPLES="${EVAL_GENERATE_SAMPLES:-0}"   # > 0: also eval_ade etc. on that many val clips
MAX_STEPS="${MAX_STEPS:--1}"                          # > 0 overrides EPOCHS
SAVE_STEPS="${SAVE_STEPS:-100}"
SEED="${SEED:-42}"
TUNE_MM_VISION="${TUNE_MM_VISION:-False}"
TUNE_MM_MLP="${TUNE_MM_MLP:-True}"
TUNE_MM_LLM="${TUNE_MM_LLM:-True}"
MODEL_MAX_LENGTH="${MODEL_MAX_LENGTH:-8192}"
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
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if [ -z "${NPROC_PER_NODE:-}" ]; then
  NPROC_PER_NODE=$("$PYTHON" -c "import torch; print(max(torch.cuda.device_count(), 1))" 2>/dev/null || echo 1)
fi
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
case "$RESUME" in 0|false|False|no) AUTO_RESUME=False ;; *) AUTO_RESUME=True ;; esac

TORCHRUN=("$PYTHON" -m torch.distributed.run --nnodes "$NNODES" --node_rank "$NODE_RANK"
  --nproc_per_node "$NPROC_PER_NODE" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT")

COMMON_ARGS=(
  --model_name_or_path "$MODEL_PATH" --dataset_use "$DATASETS" --eval_dataset_use "$EVAL_DATASETS"
  --output_dir "$OUTPUT_DIR" --tune_mm_vision "$TUNE_MM_VISION" --tune_mm_mlp "$TUNE_MM_MLP"
  --tune_mm_llm "$TUNE_MM_LLM" --num_train_epochs "$EPOCHS" --max_steps "$MAX_STEPS"
  --per_device_train_batch_size "$BATCH_SIZE" --per_device_eval_batch_size "$BATCH_SIZE"
  --gradient_accumulation_steps "$GRAD_ACCUM" --learning_rate "$LR" --weight_decay 0.0
  --lr_scheduler_type cosine --warmup_steps 0.03 --logging_steps "$LOGGING_STEPS"
  --save_strategy steps --save_steps "$SAVE_STEPS" --save_total_limit "$SAVE_TOTAL_LIMIT"
  --seed "$SEED" --model_max_length "$MODEL_MAX_LENGTH" --report_to "$REPORT_TO"
  --dataloader_num_workers "$DATALOADER_WORKERS" --auto_resume "$AUTO_RESUME"
  --ddp_find_unused_parameters False --eval_generate_samples "$EVAL_GENERATE_SAMPLES"
  --video_fps "$VIDEO_FPS" --video_min_frames "$VIDEO_MIN_FRAMES" --video_max_frames "$VIDEO_MAX_FRAMES"
  --video_min_pixels "$VIDEO_MIN_PIXELS" --video_max_pixels "$VIDEO_MAX_PIXELS"
)
[ -n "$EVAL_DATASETS" ] && COMMON_ARGS+=(--eval_strategy steps --eval_steps "$SAVE_STEPS")
[ -n "$DEEPSPEED_CONFIG" ] && COMMON_ARGS+=(--deepspeed "$DEEPSPEED_CONFIG")

COMMON_SETTINGS=(MODEL_PATH DATASETS EVAL_DATASETS EVAL_GENERATE_SAMPLES OUTPUT_DIR EPOCHS MAX_STEPS BATCH_SIZE GRAD_ACCUM LR
  SAVE_STEPS SAVE_TOTAL_LIMIT SEED TUNE_MM_VISION TUNE_MM_MLP TUNE_MM_LLM MODEL_MAX_LENGTH
  DEEPSPEED_CONFIG REPORT_TO RESUME VIDEO_FPS VIDEO_MIN_FRAMES VIDEO_MAX_FRAMES VIDEO_MIN_PIXELS
  VIDEO_MAX_PIXELS NPROC_PER_NODE NNODES NODE_RANK MASTER_ADDR MASTER_PORT)

print_settings() {
  echo "== resolved settings =="
  for name in "$@"; do printf '  %-18s %s\n' "$name" "${!name}"; done
  echo "  CUDA_VISIBLE_DEVICES ${CUDA_VISIBLE_DEVICES:-<all>}"
}

# One line and exit 2 when QUANT cannot run here, before torchrun starts any process.
check_quantization() {
  "$PYTHON" -c 'import sys
from qwenvl.train.model import quantization_config
try:
    quantization_config(sys.argv[1])
except ValueError as err:
    sys.exit(f"error: {err}")' "$1" || exit 2
}
