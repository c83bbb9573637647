#!/usr/bin/env bash
# One command from a fresh clone to the whole test suite: install, lint, migration check, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
# The browser tests drive Debian's Chromium (never a downloaded browser); CI runs as root.
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "!!! /usr/bin/chromium is missing and this is not root: the browser tests will FAIL." \
      "Install it with: sudo apt-get install -y chromium chromium-driver !!!" >&2
  fi
fi
export TF_CPP_MIN_LOG_LEVEL=3
.venv/bin/ruff check .
.venv/bin/python manage.py makemigrations --check --dry-run >/dev/null
# 1. The embedded defaults: SQLite, django-q ORM broker, in-memory channel layer.
.venv/bin/python -m pytest "$@"
# 2. The same suite on the production back ends, PostgreSQL and Redis (tests that start real
#    server processes use them too). TEST_SQLITE_ONLY=1 skips this on a machine without them;
#    otherwise an unreachable server fails the run loudly.
if [ -n "${TEST_SQLITE_ONLY:-}" ]; then
  echo "!!! TEST_SQLITE_ONLY is set: the PostgreSQL/Redis run was SKIPPED !!!" >&2
else
  export DATABASE_URL="${TEST_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/facesite}"
  export REDIS_URL="${TEST_REDIS_URL:-redis://127.0.0.1:6379/0}"
  .venv/bin/python scripts/check_services.py
  .venv/bin/python -m pytest "$@"
fi
