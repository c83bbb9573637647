#!/usr/bin/env bash
# One command from a fresh clone to the whole test suite: install, lint, migration check, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
export TF_CPP_MIN_LOG_LEVEL=3
.venv/bin/ruff check .
.venv/bin/python manage.py makemigrations --check --dry-run >/dev/null
.venv/bin/python -m pytest "$@"
