#!/usr/bin/env bash
# The test command (README, .ci/run). pytest's exit code 5 ("no tests collected") is a failure.
# The tests run in one pytest-xdist worker process: a test whose native code segfaults (a faulty
# CPU kernel) is then reported as a named failure ("worker crashed while running ...") and a new
# worker carries on with the rest, instead of the whole run dying with it.
set -uo pipefail
cd "$(dirname "$0")/.."
python -m pytest -q -p xdist -n 1 --max-worker-restart=50 "$@"
rc=$?
if [ "$rc" = 5 ]; then
  echo "run_tests: pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit "$rc"
