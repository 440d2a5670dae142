# Sourced by scripts/demo and scripts/test: make .venv with the package and its extras.
# Needs only python3 (3.10+) and the package index; no root, no system Redis.
# CANHAZGPU_VENV=DIR uses that virtual environment as it is (canhazgpu installed there).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -n "${CANHAZGPU_VENV:-}" ]; then
    VENV="$CANHAZGPU_VENV"
    export PATH="$VENV/bin:$PATH"
    return 0
fi
PY="${PYTHON:-python3}"
VENV="$ROOT/.venv"
stamp="$VENV/.installed-$(cat "$ROOT/pyproject.toml" | cksum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "canhazgpu needs Python 3.10 or newer")'
    "$PY" -m venv "$VENV"
fi
if [ ! -e "$stamp" ]; then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
    "$VENV/bin/python" -m pip install -qq -e "$ROOT[test,embedded]"
    rm -f "$VENV"/.installed-*
    touch "$stamp"
fi
# Byte-compile our sources even where PYTHONDONTWRITEBYTECODE is set: start-up time matters
# for every command (status, --help).
"$VENV/bin/python" -m compileall -q "$ROOT/src" >/dev/null 2>&1 || true
export PATH="$VENV/bin:$PATH"
