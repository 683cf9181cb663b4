"""Loading for a GPU where none is: the attention kernel that really loads, the current device,
and the GPU targets that refuse to pass where torch sees no GPU."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, run_script

from qwenvl.model import attention_choice, cuda_problem, pick_attention


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
        assert attention_choice(torch.device("cuda"), torch.bfloat16, (9, 0))[0] == "sdpa"
        assert pick_attention(torch.device("cpu")) == "sdpa"
    why = attention_choice(torch.device("cuda"), torch.bfloat16, (9, 0))[1]
    assert why.startswith("flash-attn is installed but does not load (flash_attn_2_cuda.so")


@pytest.mark.parametrize(
    "device, dtype, capability, why",
    [
        ("cpu", torch.bfloat16, None, "flash-attn runs on CUDA only, not cpu"),
        ("cuda", torch.float32, (9, 0), "flash-attn takes bf16 or fp16, not float32"),
        ("cuda", torch.bfloat16, (7, 5), "needs compute capability 8.0+, this GPU has 7.5"),
        ("cuda", torch.float16, (7, 0), "needs compute capability 8.0+, this GPU has 7.0"),
    ],
)
def test_flash_attn_only_for_half_precision_on_ampere_and_newer(device, dtype, capability, why):
    """fp32 weights (PRECISION=fp32, --dtype fp32) or an older GPU get sdpa and the reason,
    whether or not flash-attn is installed."""
    kernel, reason = attention_choice(torch.device(device), dtype, capability)
    assert kernel == "sdpa" and why in reason


def test_flash_attn_where_it_loads_for_half_precision_on_ampere(tmp_path, monkeypatch):
    # A flash-attn that imports (a stand-in package) and that transformers reports usable.
    package = tmp_path / "flash_attn"
    package.mkdir()
    (package / "__init__.py").write_text("def flash_attn_func(*args, **kwargs):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "flash_attn", raising=False)
    import transformers.utils

    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: True)
    for dtype, capability in ((torch.bfloat16, (8, 0)), (torch.float16, (9, 0))):
        assert attention_choice(torch.device("cuda"), dtype, capability)[0] == "flash_attention_2"
    assert attention_choice(torch.device("cuda"), torch.float32, (9, 0))[0] == "sdpa"


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
