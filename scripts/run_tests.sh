#!/usr/bin/env bash
# The test command (README, .ci/run). pytest's exit code 5 ("no tests collected") is a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
python -m pytest -q "$@"
rc=$?
if [ "$rc" = 5 ]; then
  echo "run_tests: pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit "$rc"
