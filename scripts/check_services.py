"""Exit non-zero, loudly, unless the PostgreSQL of DATABASE_URL and the Redis of REDIS_URL answer."""

import os
import sys

import psycopg
import redis

problems = []
try:
    # The maintenance database: the app's own may not exist yet (the tests create theirs).
    with psycopg.connect(os.environ["DATABASE_URL"].rsplit("/", 1)[0] + "/postgres", connect_timeout=5) as conn:
        conn.execute("select 1")
except Exception as err:
    problems.append(f"PostgreSQL at {os.environ['DATABASE_URL']}: {err}")
try:
    redis.from_url(os.environ["REDIS_URL"], socket_connect_timeout=5).ping()
except Exception as err:
    problems.append(f"Redis at {os.environ['REDIS_URL']}: {err}")
if problems:
    print("!!! The PostgreSQL/Redis test run cannot start:", *problems, sep="\n!!! ", file=sys.stderr)
    print("!!! Start them, or set TEST_SQLITE_ONLY=1 to run on SQLite only.", file=sys.stderr)
    sys.exit(1)
print("PostgreSQL and Redis are reachable: running the suite on them.")
