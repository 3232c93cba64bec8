#!/usr/bin/env bash
# The test command (README, .ci/run). pytest's exit code 5 ("no tests collected") is a failure.
# The tests run in one pytest-xdist worker process: a test whose native code segfaults (a faulty
# CPU kernel) is then reported as a named failure ("worker crashed while running ...") and a new
# worker carries on with the rest, instead of the whole run dying with it.
set -uo pipefail
cd "$(dirname "$0")/.."
# The pages (leaderboard, DVC plots) are checked in a real headless browser: Debian's chromium,
# installed here where the machine lets us (root with apt: CI); elsewhere those two tests skip.
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "run_tests: installing Debian's chromium for the browser checks (about 30 s)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 \
    || echo "run_tests: could not install chromium; the browser checks will skip" >&2
fi
python -m pytest -q -p xdist -n 1 --max-worker-restart=50 "$@"
rc=$?
if [ "$rc" = 5 ]; then
  echo "run_tests: pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit "$rc"
