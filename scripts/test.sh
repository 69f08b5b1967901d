#!/usr/bin/env bash
# Runs the test suite in the environment scripts/setup.sh builds (set up first, cached).
#   bash scripts/test.sh [pytest args...]     e.g.  bash scripts/test.sh -k smoke -x
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh >/dev/null
# shellcheck source=scripts/env.sh
. scripts/env.sh
rc=0
"$SM_PYTHON" -m pytest -q tests "$@" || rc=$?
if [[ $rc -eq 5 ]]; then
  echo "test.sh: pytest collected no tests; treating that as a failure" >&2
  rc=1
fi
exit "$rc"
