"""requirements.txt, pyproject.toml and uv.lock pin the same versions."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)==([^\s;#]+)\s*", line)
        if match:
            pins[match[1].lower().replace("_", "-")] = match[2]
    return pins


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_requirements_match_pyproject():
    project = _pyproject()
    declared = list(project["dependencies"])
    for name in ("bench", "dev", "ray"):  # what `make test` installs
        declared += project["optional-dependencies"][name]
    expected = _pins(declared)
    assert len(expected) == len(declared), "every dependency in pyproject.toml is pinned with =="
    assert _pins((ROOT / "requirements.txt").read_text().splitlines()) == expected
    cuda_only = project["optional-dependencies"]["gpu"] + project["optional-dependencies"]["quant"]
    text = (ROOT / "requirements.txt").read_text()
    assert all(f"{n}=={v}" in text for n, v in _pins(cuda_only).items())


def test_lock_file_holds_the_pinned_versions():
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    locked = {p["name"]: p["version"] for p in lock["package"] if "version" in p}
    declared = list(_pyproject()["dependencies"])
    for name, version in _pins(declared).items():
        assert locked.get(name) == version, (
            f"{name}: uv.lock has {locked.get(name)}, pyproject {version}"
        )
    assert locked["torch"] == "2.13.0" and locked["torchvision"] == "0.28.0"
