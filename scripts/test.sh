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
.venv/bin/lint-imports --no-logo  # no import cycles between apps: the contracts in pyproject.toml
.venv/bin/python manage.py makemigrations --check --dry-run >/dev/null
# FaceNet's TFLite file (FACE_EMBED_RUNTIME=tflite) converted once, before any test or server needs it.
.venv/bin/python manage.py prepare_models --embedder facenet
# 1. The embedded defaults: SQLite, django-q ORM broker, in-memory channel layer. The tests that
#    start real server processes (marked `servers`: load, several workers, faults) run in pass 2.
if [ -n "${TEST_SQLITE_ONLY:-}" ]; then
  .venv/bin/python -m pytest "$@"
  echo "!!! TEST_SQLITE_ONLY is set: the PostgreSQL/Redis pass (and the server-process tests) were SKIPPED !!!" >&2
  exit 0
fi
.venv/bin/python -m pytest -m "not servers" --durations=15 "$@"
# 2. The same suite on the production back ends, PostgreSQL and Redis, plus the server-process
#    tests. An unreachable PostgreSQL/Redis fails the run loudly (REQUIRE_SERVICES turns the
#    tests' loud skips into failures); TEST_SQLITE_ONLY=1 is for a machine without them.
export DATABASE_URL="${TEST_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/facesite}"
export REDIS_URL="${TEST_REDIS_URL:-redis://127.0.0.1:6379/0}"
export REQUIRE_SERVICES=1
.venv/bin/python scripts/check_services.py
#    The engine-only files (no database, no cache, no server) ran in pass 1 and would only repeat
#    here, and so would the browser tests and the others marked embedded_only: they always set up
#    their own SQLite run.
.venv/bin/python -m pytest -m "not browser and not embedded_only" --durations=15 \
  --ignore=tests/test_engine.py --ignore=tests/test_index.py --ignore=tests/test_dlib_descriptor.py --ignore=tests/test_dlib_tf.py \
  --ignore=tests/test_speed_detector.py --ignore=tests/test_speed_embedding.py --ignore=tests/test_structure.py "$@"
