# Shared by the two launchers (sourced): process layout, the Python to run, the resume switch.

# The project's environment when it exists, so the launchers work without `uv run`.
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

print_settings() {
  echo "== resolved settings =="
  for name in "$@"; do printf '  %-18s %s\n' "$name" "${!name}"; done
  echo "  CUDA_VISIBLE_DEVICES ${CUDA_VISIBLE_DEVICES:-<all>}"
}
