# Two commands on a fresh machine with python3 and pip: `make demo` and `make test`.
# uv is installed when missing; the environment comes from uv.lock.

UV := $(shell command -v uv 2>/dev/null || echo python3 -m uv)
EXTRAS := --extra bench --extra dev
DEMO_DIR ?= demo_output

.PHONY: demo test sync uv lint clean-demo

uv:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || \
		python3 -m pip install --quiet --user uv || \
		python3 -m pip install --quiet --user --break-system-packages uv

sync: uv
	$(UV) sync --frozen $(EXTRAS)
	$(UV) run --frozen --no-sync python -c "import torch, torchvision, transformers"

demo: sync
	DEMO_DIR=$(DEMO_DIR) PYTHON=.venv/bin/python bash scripts/demo.sh

test: sync
	$(UV) run --frozen --no-sync python -m pytest

lint: sync
	$(UV) run --frozen --no-sync ruff check .

clean-demo:
	rm -rf $(DEMO_DIR)
