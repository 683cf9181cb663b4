#!/usr/bin/env bash
# Install uv into the folder given (default .tools/uv) with pip, for machines without uv.
# pip comes from the first python3 that has it: the one on PATH, or, when that is a virtual
# environment without pip (such as the project's own .venv), the interpreter it was made from.
set -euo pipefail
UV_VERSION=0.13.9
dest=${1:-.tools/uv}
tmp="$dest.partial"

pythons=(python3)
base=$(python3 -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))' 2>/dev/null || true)
[ -n "$base" ] && pythons+=("$base")
for py in "${pythons[@]}"; do
  "$py" -m pip --version >/dev/null 2>&1 || continue
  rm -rf "$tmp"
  # --break-system-packages only for pythons that refuse any pip install (PEP 668); a
  # --target folder never touches the system's packages.
  if "$py" -m pip install --quiet --disable-pip-version-check --target "$tmp" "uv==$UV_VERSION" ||
    "$py" -m pip install --quiet --disable-pip-version-check --break-system-packages \
      --target "$tmp" "uv==$UV_VERSION"; then
    rm -rf "$dest" && mv "$tmp" "$dest"   # complete or absent, never half-installed
    echo "installed uv $UV_VERSION into $dest"
    exit 0
  fi
done
rm -rf "$tmp"
echo "error: cannot install uv: no python3 with pip found (tried: ${pythons[*]}); install uv (https://docs.astral.sh/uv/) and run make again" >&2
exit 1
