#!/usr/bin/env bash
# One command from a fresh clone to a running app on the embedded defaults (SQLite, django-q ORM
# broker, in-memory channel layer): install, migrate, create a demo admin, then run the ASGI
# server and the two django-q clusters (enrollment; training) together. Ctrl-C stops them all.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
PY=.venv/bin/python
HOST="${HOST:-127.0.0.1}"
PORT="${PORT:-8000}"
$PY manage.py migrate --noinput
$PY manage.py collectstatic --noinput -v0
# The served embedder's models converted once per machine (TFLite), before the server and workers start.
$PY manage.py prepare_models
# Printed again once the server is up, after the worker's and server's start-up lines.
CREDENTIALS="$($PY manage.py create_demo_admin)"
echo "$CREDENTIALS"
# Two django-q clusters: photos, webhooks and schedules; and training runs on their own queue, so
# enrollment never waits behind a retrain.
$PY manage.py qcluster &
WORKER=$!
Q_CLUSTER_NAME=training $PY manage.py qcluster &
TRAINER=$!
trap 'kill $WORKER $TRAINER 2>/dev/null || true' EXIT INT TERM
(
  # Once the server answers: the address and the demo account, the two lines a newcomer needs.
  for _ in $(seq 600); do
    if (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; then
      printf '\n==> Serving on http://%s:%s/  (admin: /admin/, API docs: /api/v1/docs/)\n==> %s\n\n' "$HOST" "$PORT" "$CREDENTIALS"
      exit 0
    fi
    sleep 1
  done
) &
# Websocket messages up to 16 MiB reach the app (daphne's own cap is 1 MiB and drops the socket), so
# that /ws/identify/ can answer an oversized frame with frame_too_large (CHECKIN_MAX_FRAME_BYTES).
.venv/bin/daphne -b "$HOST" -p "$PORT" --websocket-max-message-size 16777216 --websocket-max-frame-size 16777216 \
  facesite.asgi:application
