#!/usr/bin/env bash
# Sets up lvmmed_ext in the current Python (python3, or $PYTHON): keeps an installed torch (else installs
# torch==2.13.0), installs the missing build/test/demo dependencies, then builds and installs the package
# (editable). Offline machines: packages that cannot be installed are reported; the build only needs the
# "required" ones. Environment: LVMMED_WITH_CUDA=AUTO|ON|OFF, LVMMED_CUDA_ARCHS="80;90", LVMMED_EMULATOR=ON|OFF
# (default ON: also build the test-only emulated CUDA backend build/emu/_lvmmed_emu, see tests/emulator.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@" 2>&1 | grep -v "^WARNING: " || true; }
missing() {  # prints the distributions among "$@" that are not installed
  "$PY" - "$@" <<'PYEOF'
import sys
from importlib.metadata import PackageNotFoundError, version
for name in sys.argv[1:]:
    try:
        version(name)
    except PackageNotFoundError:
        print(name)
PYEOF
}

if "$PY" -c "import torch" 2>/dev/null; then
  echo "setup: keeping the installed torch $("$PY" -c 'import torch; print(torch.__version__)')"
else
  echo "setup: installing torch==2.13.0"
  pip_install torch==2.13.0
fi

required=(numpy pybind11 scikit-build-core ninja pytest hypothesis scipy)
optional=(opencv-python-headless matplotlib scikit-learn pydicom pydicom-data nibabel nilearn tifffile pygmtools
          ruff clang-format)
command -v cmake >/dev/null || required+=(cmake)

todo=$(missing "${required[@]}")
if [ -n "$todo" ]; then
  echo "setup: installing" $todo
  pip_install $todo
  still=$(missing $todo)
  [ -z "$still" ] || { echo "setup: could not install required packages: $still" >&2; exit 1; }
fi
todo=$(missing "${optional[@]}")
if [ -n "$todo" ]; then
  echo "setup: installing optional" $todo
  for p in $todo; do pip_install "$p"; done
  still=$(missing $todo)
  [ -z "$still" ] || echo "setup: WARNING optional packages unavailable (offline?): $still; the features and tests that need them are skipped"
fi

export LVMMED_EMULATOR=${LVMMED_EMULATOR:-ON}
echo "setup: building lvmmed_ext (LVMMED_WITH_CUDA=${LVMMED_WITH_CUDA:-AUTO}, LVMMED_EMULATOR=$LVMMED_EMULATOR)"
"$PY" -m pip install --disable-pip-version-check --no-build-isolation --no-deps -q -e . 2>&1 | grep -v "^WARNING: " || true
"$PY" -m lvmmed_ext.info
