"""Loading for a GPU where none is: the attention kernel that really loads, the current device,
and the GPU targets that refuse to pass where torch sees no GPU."""

from __future__ import annotations

import logging
import subprocess
import sys

import torch
from conftest import ROOT, run_script

from qwenvl.model import cuda_problem, pick_attention


def test_a_flash_attn_that_does_not_load_falls_back_to_sdpa(tmp_path, monkeypatch, caplog):
    # What a flash-attn built against another torch does: it is found, and fails to import.
    package = tmp_path / "flash_attn"
    package.mkdir()
    (package / "__init__.py").write_text(
        'raise ImportError("flash_attn_2_cuda.so: undefined symbol: _ZN3c104cuda9SetDeviceEi")'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "flash_attn", raising=False)
    with caplog.at_level(logging.WARNING):
        assert pick_attention(torch.device("cuda")) == "sdpa"
    assert "flash-attn is installed but does not load (flash_attn_2_cuda.so: undefined symbol" in (
        caplog.text
    )
    assert pick_attention(torch.device("cpu")) == "sdpa"


def test_make_test_gpu_keeps_the_gpu_extras_and_fails_without_a_gpu():
    plan = subprocess.run(
        ["make", "-n", "test-gpu"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    sync = next(line for line in plan.splitlines() if " sync " in line)
    assert "--extra gpu --extra quant" in sync and "--compile-bytecode" in sync
    assert "qwenvl.model --require-cuda" in plan
    if not torch.cuda.is_available():
        result = run_script(sys.executable, "-m", "qwenvl.model", "--require-cuda", check=False)
        assert result.returncode == 1 and result.stderr.startswith(
            "error: make test-gpu needs a GPU"
        )
        assert f"built for CUDA {torch.version.cuda}" in cuda_problem()
