# Source me: exports the paths scripts/setup.sh builds (it does not run setup).
#   . scripts/env.sh && "$SM_PYTHON" -m pytest -q tests
export STILL_MOVING_HOME="${STILL_MOVING_HOME:-$HOME/.cache/still-moving}"
export SM_PYTHON="$STILL_MOVING_HOME/venv/bin/python"
export COMFYUI_PATH="${COMFYUI_PATH:-$STILL_MOVING_HOME/comfyui}"
