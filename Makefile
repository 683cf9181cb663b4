# Two commands on a fresh machine with python3 and pip: `make demo` and `make test`.
# uv comes from PATH, else from .tools/uv (installed there with pip on first use, so make also
# works from inside the project's own .venv, which has neither uv nor pip).
# The environment comes from uv.lock, with every module compiled to bytecode at install time:
# where PYTHONDONTWRITEBYTECODE is set (many container images), Python would otherwise compile
# torch and transformers again in every process, tripling each script's start-up.

UV_LOCAL := $(CURDIR)/.tools/uv/bin/uv
UV := $(shell command -v uv 2>/dev/null || echo $(UV_LOCAL))
EXTRAS := --extra bench --extra dev --extra ray
GPU_EXTRAS := --extra gpu --extra quant
DEMO_DIR ?= demo_output

.PHONY: demo ablation test test-gpu sync uv lint clean-demo

uv:
	@[ -x "$(UV)" ] || bash scripts/install_uv.sh .tools/uv

sync: uv
	"$(UV)" sync --frozen --compile-bytecode $(EXTRAS)
	"$(UV)" run --frozen --no-sync python -c "import torch, torchvision, transformers"

demo: sync
	DEMO_DIR=$(DEMO_DIR) PYTHON=.venv/bin/python bash scripts/demo.sh

# The demo with the ablation: also fine-tuned on video alone, on the same clips and test segments.
ablation: sync
	DEMO_DIR=$(DEMO_DIR) DEMO_ABLATION=1 PYTHON=.venv/bin/python bash scripts/demo.sh

test: sync
	"$(UV)" run --frozen --no-sync python -m pytest

# On a CUDA machine: training (flash-attn, QLoRA), evaluation, merge and prediction on the GPU.
# It keeps the GPU extras installed, and fails (not skips) where torch sees no GPU.
test-gpu: uv
	"$(UV)" sync --frozen --compile-bytecode $(EXTRAS) $(GPU_EXTRAS)
	"$(UV)" run --frozen --no-sync python -m qwenvl.model --require-cuda
	"$(UV)" run --frozen --no-sync python -m pytest tests/gpu -v

lint: sync
	"$(UV)" run --frozen --no-sync ruff check .

clean-demo:
	rm -rf $(DEMO_DIR)
