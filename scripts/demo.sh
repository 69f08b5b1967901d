#!/usr/bin/env bash
# Sets up everything (cached), then runs an example workflow headless in a real ComfyUI.
#   bash scripts/demo.sh [--models /path/to/ComfyUI/models] [--workflow workflows/X.json]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh >/dev/null
# shellcheck source=scripts/env.sh
. scripts/env.sh
exec "$SM_PYTHON" scripts/demo.py "$@"
