#!/usr/bin/env bash
# Re-resolve pyproject.toml's dependency ranges (wsss + dev, crf and sweep extras) into exact pins:
#   requirements/cpu.lock  installed for real in a scratch venv (torch from constraints-cpu.txt), then frozen;
#                          requirements/torch-cpu.txt gets its torch pin and PyTorch's CPU wheel index, which
#                          alone serves that build (torch is installed first and alone, so the index is asked
#                          once, not for every pin)
#   requirements/gpu.lock  resolved against PyPI alone (the CUDA build of the same torch), not installed here
# Run through `make lock`; commit both files once `make test` passes on them.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH=$(sed -n 's/^torch==//p' constraints-cpu.txt)
TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
header() {  # $1 = what the lock is for
  echo "# $1: exact versions of wsss's dependencies (pyproject.toml ranges + [dev,crf,sweep])."
  echo "# Written by \`make lock\` ($(date -u +%Y-%m-%d), $("$PYTHON" -c 'import platform; print(platform.python_implementation(), platform.python_version(), platform.system(), platform.machine())')); installed by \`make install\`."
}

"$PYTHON" -m venv "$SCRATCH/cpu"
"$SCRATCH/cpu/bin/python" -m pip install -q --upgrade pip
"$SCRATCH/cpu/bin/python" -m pip install -q --no-deps -c constraints-cpu.txt --extra-index-url "$TORCH_CPU_INDEX" \
  "torch==$TORCH+cpu"
"$SCRATCH/cpu/bin/python" -m pip install -q -c constraints-cpu.txt -e ".[dev,crf,sweep]"
"$SCRATCH/cpu/bin/python" -m pip check
{
  header "CPU set (torch==$TORCH, CPU build; installed together and checked with pip check)"
  "$SCRATCH/cpu/bin/python" -m pip freeze --all --exclude-editable | grep -v -E '^(pip|wsss)==' | LC_ALL=C sort -f
} > requirements/cpu.lock.tmp
mv requirements/cpu.lock.tmp requirements/cpu.lock
{
  echo "# torch's CPU build, installed alone (pip --no-deps) before requirements/cpu.lock: only PyTorch's CPU wheel"
  echo "# index serves +cpu builds. Naming that index here, not for the whole lock, keeps it to one lookup."
  echo "# Written by \`make lock\` (requirements/lock.sh) with cpu.lock; the pin is cpu.lock's."
  echo "--extra-index-url $TORCH_CPU_INDEX"
  grep '^torch==' requirements/cpu.lock
} > requirements/torch-cpu.txt.tmp
mv requirements/torch-cpu.txt.tmp requirements/torch-cpu.txt
# Every other pin must install with pip's defaults (PyPI), not only from this machine's wheel folders.
grep -v -E '^(#|torch==)' requirements/cpu.lock > "$SCRATCH/cpu-pypi.txt"
env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null \
  "$SCRATCH/cpu/bin/python" -m pip install -q --dry-run --ignore-installed --no-deps -r "$SCRATCH/cpu-pypi.txt"

# GPU set: PyPI only (no local wheel folders or extra indexes, whose torch may be a CPU build).
"$PYTHON" -m venv "$SCRATCH/gpu"
env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null \
  "$SCRATCH/gpu/bin/python" -m pip install -q --dry-run --ignore-installed --report "$SCRATCH/gpu.json" \
  "torch==$TORCH" -e ".[dev,crf,sweep]"
{
  header "GPU set (torch==$TORCH, CUDA build; resolved together by pip against PyPI, installed on GPU machines only)"
  "$SCRATCH/cpu/bin/python" - "$SCRATCH/gpu.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
pins = {i["metadata"]["name"]: i["metadata"]["version"] for i in report["install"]}
for name in sorted(pins, key=str.lower):
    if name.lower() not in ("wsss", "pip"):
        print(f"{name}=={pins[name]}")
PY
} > requirements/gpu.lock.tmp
mv requirements/gpu.lock.tmp requirements/gpu.lock
echo "wrote requirements/cpu.lock ($(grep -vc '^#' requirements/cpu.lock) pins), requirements/torch-cpu.txt and requirements/gpu.lock ($(grep -vc '^#' requirements/gpu.lock) pins)"
