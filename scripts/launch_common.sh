# Shared by the two launchers (sourced after each sets KIND and its own defaults): the settings
# both take, the pre-flight, the process layout and the arguments both pass to train.py.
# Paths in the settings are the caller's: nothing here changes folder.

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
PRECISION="${PRECISION:-auto}"                        # auto: bf16 on GPU, fp32 on CPU; bf16: the
                                                      # GPU's regime on a CPU too; fp32
# --- video settings, per frame (Qwen3-VL spends one token per 32x32 pixels per 2 frames):
#   VIDEO_FPS, VIDEO_MIN_FRAMES, VIDEO_MAX_FRAMES, VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS; their
#   defaults are qwenvl.video.VideoSettings' (filled in by the pre-flight below).
# --- processes: one per visible GPU (1 on CPU), several nodes through NNODES / NODE_RANK
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"

COMMON_SETTINGS=(MODEL_PATH DATASETS EVAL_DATASETS EVAL_GENERATE_SAMPLES OUTPUT_DIR EPOCHS MAX_STEPS
  BATCH_SIZE GRAD_ACCUM LR SAVE_STEPS SAVE_TOTAL_LIMIT SEED TUNE_MM_VISION TUNE_MM_MLP TUNE_MM_LLM
  MODEL_MAX_LENGTH DEEPSPEED_CONFIG REPORT_TO RESUME LOGGING_STEPS DATALOADER_WORKERS PRECISION VIDEO_FPS
  VIDEO_MIN_FRAMES VIDEO_MAX_FRAMES VIDEO_MIN_PIXELS VIDEO_MAX_PIXELS NPROC_PER_NODE NNODES
  NODE_RANK MASTER_ADDR MASTER_PORT OMP_NUM_THREADS)

if [ -z "${PYTHON:-}" ]; then
  if [ -x "$PROJECT/.venv/bin/python" ]; then PYTHON="$PROJECT/.venv/bin/python"; else PYTHON=python3; fi
fi
# The shipped DeepSpeed configs are found beside the launchers when the caller has none.
if [ -n "${DEEPSPEED_CONFIG:-}" ] && [ ! -f "$DEEPSPEED_CONFIG" ] && [ -f "$PROJECT/$DEEPSPEED_CONFIG" ]; then
  DEEPSPEED_CONFIG="$PROJECT/$DEEPSPEED_CONFIG"
fi

# Pre-flight (qwenvl/train/preflight.py): fills in the defaults the Python settings own (LoRA,
# video), NPROC_PER_NODE and OMP_NUM_THREADS, and checks every setting; a bad one is one line
# and exit status 2, before torchrun starts.
run_preflight() {  # $1 = lora or full; then the names of the settings to check
  local kind=$1 name assignments
  shift
  local settings=()
  for name in "$@"; do [ -n "${!name+set}" ] && settings+=("$name=${!name}"); done
  assignments=$(env "${settings[@]}" "$PYTHON" -m qwenvl.train.preflight "$kind") || exit 2
  eval "$assignments"
}

print_settings() {
  echo "== resolved settings =="
  for name in "$@"; do printf '  %-18s %s\n' "$name" "${!name-}"; done
  echo "  CUDA_VISIBLE_DEVICES ${CUDA_VISIBLE_DEVICES:-<all>}"
}

# torchrun, except that a worker's user error ends the job with its one line (exit status 2).
torchrun_train() {
  case "$RESUME" in 0|false|False|no) local auto_resume=False ;; *) local auto_resume=True ;; esac
  local args=(
    --model_name_or_path "$MODEL_PATH" --dataset_use "$DATASETS" --eval_dataset_use "$EVAL_DATASETS"
    --output_dir "$OUTPUT_DIR" --tune_mm_vision "$TUNE_MM_VISION" --tune_mm_mlp "$TUNE_MM_MLP"
    --tune_mm_llm "$TUNE_MM_LLM" --num_train_epochs "$EPOCHS" --max_steps "$MAX_STEPS"
    --per_device_train_batch_size "$BATCH_SIZE" --per_device_eval_batch_size "$BATCH_SIZE"
    --gradient_accumulation_steps "$GRAD_ACCUM" --learning_rate "$LR" --weight_decay 0.0
    --lr_scheduler_type cosine --warmup_steps 0.03 --logging_steps "$LOGGING_STEPS"
    --save_strategy steps --save_steps "$SAVE_STEPS" --save_total_limit "$SAVE_TOTAL_LIMIT"
    --seed "$SEED" --model_max_length "$MODEL_MAX_LENGTH" --report_to "$REPORT_TO"
    --dataloader_num_workers "$DATALOADER_WORKERS" --auto_resume "$auto_resume"
    --ddp_find_unused_parameters False --eval_generate_samples "$EVAL_GENERATE_SAMPLES"
    --video_fps "$VIDEO_FPS" --video_min_frames "$VIDEO_MIN_FRAMES" --video_max_frames "$VIDEO_MAX_FRAMES"
    --video_min_pixels "$VIDEO_MIN_PIXELS" --video_max_pixels "$VIDEO_MAX_PIXELS"
  )
  [ -n "$EVAL_DATASETS" ] && args+=(--eval_strategy steps --eval_steps "$SAVE_STEPS")
  case "$PRECISION" in bf16) args+=(--bf16 True) ;; fp32) args+=(--bf16 False) ;; esac
  [ -n "$DEEPSPEED_CONFIG" ] && args+=(--deepspeed "$DEEPSPEED_CONFIG")
  exec "$PYTHON" -m qwenvl.train.torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" \
    --nproc_per_node "$NPROC_PER_NODE" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
    "$PROJECT/scripts/train.py" "${args[@]}" "$@"
}
