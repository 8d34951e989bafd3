#!/usr/bin/env bash
# The GPU session in stages, on a machine with a CUDA GPU and its own torch (no internet needed):
#   scripts/gpu_check.sh build   build the CUDA backend in place (editable), print lvmmed info
#   scripts/gpu_check.sh test    the cuda-marked tests (CPU/CUDA parity, low precision, edge cases)
#   scripts/gpu_check.sh bench   lvmmed bench all --device cuda: JSON, plots, and BENCHMARKS.md with its CUDA section
#   scripts/gpu_check.sh all     the three in that order
# Logs and results go to $OUT (the device tool's output folder) or gpu_out/; stages are separate commands so that
# each can run as its own call on a machine lent for a short time.
# Environment: LVMMED_CUDA_ARCHS (default: the visible GPU's, e.g. 90 on an H100: one arch builds faster).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
out=${OUT:-gpu_out}
mkdir -p "$out"
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1  # offline: never wait on a package index
stage=${1:-all}
case "$stage" in
  build | test | bench | all) ;;
  *)
    echo "usage: scripts/gpu_check.sh build|test|bench|all (got '$stage')" >&2
    exit 2
    ;;
esac

"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
  echo "gpu_check: no CUDA device visible to $PY (torch $("$PY" -c 'import torch; print(torch.__version__)'))" >&2
  exit 2
}

build() {
  local archs=${LVMMED_CUDA_ARCHS:-$("$PY" -c "import torch; print('%d%d' % torch.cuda.get_device_capability())")}
  echo "== build (LVMMED_WITH_CUDA=ON, archs $archs)"
  local t0=$SECONDS
  if ! LVMMED_WITH_CUDA=ON LVMMED_CUDA_ARCHS="$archs" "$PY" -m pip install --no-build-isolation --no-deps -v -e . \
    >"$out/build.log" 2>&1; then
    grep -n -i -E "error|fatal" "$out/build.log" | head -40
    echo "gpu_check: build failed after $((SECONDS - t0)) s; full log in $out/build.log" >&2
    return 1
  fi
  echo "built in $((SECONDS - t0)) s"
  (cd / && "$PY" -m lvmmed_ext.info) | tee "$out/info.txt"
}

run_tests() {
  echo "== cuda tests"
  "$PY" -m pytest -q -m cuda -p no:cacheprovider -rf --junitxml "$out/cuda_tests.xml" \
    2>&1 | tee "$out/cuda_tests.log" | tail -40
  return "${PIPESTATUS[0]}"
}

bench() {
  echo "== benchmarks"
  cp BENCHMARKS.md "$out/BENCHMARKS.md"
  "$PY" -m lvmmed_ext bench all --device cuda --json "$out/suite_cuda.json" --plots "$out/plots_cuda" \
    --write-md "$out/BENCHMARKS.md" 2>&1 | tee "$out/bench.log" | tail -60
  return "${PIPESTATUS[0]}"
}

case "$stage" in
  build) build ;;
  test) run_tests ;;
  bench) bench ;;
  all) build && { run_tests; bench; } ;;
esac
