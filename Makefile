# Two commands on a fresh machine with python3 and pip: `make demo` and `make test`.
# uv comes from PATH, else from .tools/uv (installed there with pip on first use, so make also
# works from inside the project's own .venv, which has neither uv nor pip).
# The environment comes from uv.lock (--inexact: what is installed beyond the extras named, the
# GPU extras on a GPU machine say, stays), with every module compiled to bytecode at install time:
# where PYTHONDONTWRITEBYTECODE is set (many container images), Python would otherwise compile
# torch and transformers again in every process, tripling each script's start-up.

UV_LOCAL := $(CURDIR)/.tools/uv/bin/uv
UV := $(shell command -v uv 2>/dev/null || echo $(UV_LOCAL))
EXTRAS := --extra bench --extra dev --extra ray
GPU_EXTRAS := --extra gpu --extra quant
DEMO_DIR ?= demo_output

.PHONY: demo ablation test test-ablation test-gpu gpu-check vllm test-vllm sync uv lint clean-demo

uv:
	@[ -x "$(UV)" ] || bash scripts/install_uv.sh .tools/uv

sync: uv
	"$(UV)" sync --frozen --inexact --compile-bytecode $(EXTRAS)
	"$(UV)" run --frozen --no-sync python -c "import torch, torchvision, transformers"

demo: sync
	DEMO_DIR=$(DEMO_DIR) PYTHON=.venv/bin/python bash scripts/demo.sh

# The demo with the ablation: also fine-tuned on video alone, on the same clips and test segments.
ablation: sync
	DEMO_DIR=$(DEMO_DIR) DEMO_ABLATION=1 PYTHON=.venv/bin/python bash scripts/demo.sh

test: sync
	"$(UV)" run --frozen --no-sync python -m pytest --ignore=tests/vllm --ignore=tests/ablation

# `make ablation` end to end, shortened (three trainings, four evaluations: a few minutes);
# CI runs it after make test.
test-ablation: sync
	"$(UV)" run --frozen --no-sync python -m pytest tests/ablation

# On a CUDA machine: training (flash-attn, QLoRA), evaluation, merge and prediction on the GPU.
# It keeps the GPU extras installed, and fails (not skips) where torch sees no GPU.
test-gpu: uv
	"$(UV)" sync --frozen --inexact --compile-bytecode $(EXTRAS) $(GPU_EXTRAS)
	"$(UV)" run --frozen --no-sync python -m qwenvl.model --require-cuda
	"$(UV)" run --frozen --no-sync python -m pytest tests/gpu -v

# vLLM for --backend vllm, in an environment of its own (it needs transformers < 5.20; ours is
# 5.23): .venv-vllm from envs/vllm/gpu.lock where nvidia-smi lists a GPU, else cpu.lock (vLLM's
# CPU build). Hash-pinned; docs/vllm.md says why each pin is there.
VLLM_VENV ?= .venv-vllm
VLLM_LOCK ?= envs/vllm/$(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu).lock
vllm: uv
	@[ -x "$(VLLM_VENV)/bin/python" ] || "$(UV)" venv --python 3.11 "$(VLLM_VENV)"
	"$(UV)" pip sync --compile-bytecode --python "$(VLLM_VENV)/bin/python" "$(VLLM_LOCK)"
	"$(VLLM_VENV)/bin/python" -c "import torch, torchvision, transformers, vllm"

# The vLLM backend against the transformers backend, token for token, in float32 on the tiny model.
test-vllm: sync vllm
	"$(UV)" run --frozen --no-sync python -m pytest tests/vllm

# The first GPU's one command: the GPU tests, then the GPU benchmarks (a 4B-shaped model's
# training steps with MFU; generation with and without a compiled decoding step), as JSON in
# gpu_results/ for BENCHMARKS.md.
GPU_RESULTS ?= gpu_results
gpu-check: test-gpu
	mkdir -p $(GPU_RESULTS)
	"$(UV)" run --frozen --no-sync python scripts/benchmark.py train --model-config 4b --repeats 2 --json $(GPU_RESULTS)/train_4b.json
	"$(UV)" run --frozen --no-sync python scripts/benchmark.py generate --repeats 2 --json $(GPU_RESULTS)/generate.json
	"$(UV)" run --frozen --no-sync python scripts/benchmark.py generate --compile --repeats 2 --json $(GPU_RESULTS)/generate_compiled.json

lint: sync
	"$(UV)" run --frozen --no-sync ruff check .

clean-demo:
	rm -rf $(DEMO_DIR)
