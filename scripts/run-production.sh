#!/usr/bin/env bash
# Production: PostgreSQL + Redis, WEB_WORKERS ASGI worker processes (uvicorn) and a django-q cluster.
#
#   SECRET_KEY=... DATABASE_URL=postgresql://postgres@127.0.0.1:5432/facesite \
#   REDIS_URL=redis://127.0.0.1:6379/0 ALLOWED_HOSTS=faces.example.org bash scripts/run-production.sh
#
# DEBUG is off: secure cookies and HSTS (serve it behind TLS; set SECURE_COOKIES=0 only to try it
# over plain http on loopback), static files from WhiteNoise. Ctrl-C or SIGTERM stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${SECRET_KEY:?set SECRET_KEY (e.g. python -c 'import secrets; print(secrets.token_urlsafe(50))')}"
: "${DATABASE_URL:?set DATABASE_URL=postgresql://user@host:5432/dbname}"
: "${REDIS_URL:?set REDIS_URL=redis://host:6379/0}"
: "${ALLOWED_HOSTS:?set ALLOWED_HOSTS (comma-separated host names)}"
export DEBUG=0 TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
HOST="${HOST:-127.0.0.1}"
PORT="${PORT:-8000}"
WEB_WORKERS="${WEB_WORKERS:-2}"
# Two django-q clusters, each with its own queue: photos (Q_WORKERS workers) and training runs
# (Q_TRAINING_WORKERS, Q_CLUSTER_NAME=training): a retrain (minutes) never holds up new photos.
export Q_WORKERS="${Q_WORKERS:-1}"
PY=.venv/bin/python

[ -n "${SKIP_SETUP:-}" ] || bash scripts/setup.sh
$PY scripts/check_services.py
$PY manage.py migrate --noinput
$PY manage.py collectstatic --noinput -v0
# Any deploy-check warning stops the start: a weak SECRET_KEY, cookies without Secure, no HSTS, ...
# (settings.py silences a check only where the configuration answered it explicitly).
$PY manage.py check --deploy --fail-level WARNING

$PY manage.py qcluster &
QCLUSTER=$!
Q_CLUSTER_NAME=training $PY manage.py qcluster &
TRAINER=$!
stop() { kill "$QCLUSTER" "$TRAINER" 2>/dev/null || true; wait "$QCLUSTER" "$TRAINER" 2>/dev/null || true; }
trap stop EXIT
trap 'exit 0' INT TERM

echo "Serving on http://$HOST:$PORT/ with $WEB_WORKERS web workers and two django-q clusters (enrollment pid $QCLUSTER, training pid $TRAINER)"
# Channels' router has no lifespan protocol; models warm up when each worker imports the app.
# --no-proxy-headers: uvicorn would otherwise take the client address from X-Forwarded-For on
# connections from 127.0.0.1; the app does that itself, through TRUSTED_PROXY_COUNT proxies only
# (facesite/client_ip.py), so that the lockout, throttle and audit log follow one rule.
# --ws-max-size: websocket messages up to 16 MiB reach the app, which answers one over
# CHECKIN_MAX_FRAME_BYTES with frame_too_large instead of the socket being dropped.
.venv/bin/uvicorn facesite.asgi:application --host "$HOST" --port "$PORT" --workers "$WEB_WORKERS" \
  --lifespan off --no-proxy-headers --no-server-header --timeout-graceful-shutdown 20 --ws-max-size 16777216 &
WEB=$!
stop() { kill "$WEB" "$QCLUSTER" "$TRAINER" 2>/dev/null || true; wait "$WEB" "$QCLUSTER" "$TRAINER" 2>/dev/null || true; }
wait "$WEB"
