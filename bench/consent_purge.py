"""The daily retention's search for old consents nothing refers to, on PostgreSQL: the ``NOT IN
(subquery)`` form it had beside the ``NOT EXISTS`` form it has now (privacy.services.unreferenced_consents).

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python -m bench.consent_purge --consents 200000 --checkins 1000000 --rounds 5

A throwaway database (``bench_consent_purge_<pid>``, dropped at the end) next to DATABASE_URL's,
migrated, then filled by ``generate_series``: ``--consents`` consents, all past the retention period;
``--checkins`` check-ins spread over the first half of them (a tenth of the check-ins with no
consent: made before consents were recorded, or their consent deleted), a visitor's sighting for
for 1 in 20 of the other half (1 in 40 of all). Both queries fetch the ids of the consents
the purge would delete (what its ``delete()`` reads first), taking turns; each is checked to return
the same ids. A query past ``--timeout`` seconds is cancelled and reported as such.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from datetime import timedelta


def not_in_consents():
    """The query as the purge ran it before: each referring table's non-NULL ids in a NOT IN list."""
    from checkin.models import Consent

    rows = Consent.objects.all()
    for relation in Consent._meta.get_fields(include_hidden=True):
        if relation.auto_created and not relation.concrete and (relation.one_to_many or relation.one_to_one):
            field = relation.field.name
            referenced = relation.related_model._base_manager.filter(**{f"{field}__isnull": False}).values(field)
            rows = rows.exclude(pk__in=referenced)
    return rows


def fill(consents: int, checkins: int) -> None:
    from django.db import connection

    referenced = max(consents // 2, 1)
    with connection.cursor() as cursor:
        cursor.execute(
            """INSERT INTO recognition_consent (purpose, notice_version, age_confirmed, method, given_at)
               SELECT 'checkin', 'bench', true, 'page', now() - interval '400 days' + g * interval '1 second'
               FROM generate_series(1, %s) g""",
            [consents],
        )
        cursor.execute("SELECT min(id) FROM recognition_consent")
        first = cursor.fetchone()[0]
        cursor.execute(
            """INSERT INTO recognition_checkin (checked_in_at, similarity, threshold, frames, embedder, consent_id,
                   liveness_checked, time_source, matched_faces)
               SELECT now() - interval '10 days', 0.9, 0.5, 4, '',
                   CASE WHEN g %% 10 = 0 THEN NULL ELSE %s + (g %% %s) END, false, 'server', '[]'::jsonb
               FROM generate_series(1, %s) g""",
            [first, referenced, checkins],
        )
        cursor.execute(
            """INSERT INTO visitors_visitor (first_seen_at, last_seen_at, created_at)
               SELECT now(), now(), now() FROM generate_series(1, %s)""",
            [max(consents // 40, 1)],
        )
        cursor.execute(
            """INSERT INTO visitors_sighting (visitor_id, seen_at, last_seen_at, frames, consent_id, embedder, crop)
               SELECT v.id, now(), now(), 1, %s + %s + (row_number() OVER (ORDER BY v.id) - 1) * 20, '', ''
               FROM visitors_visitor v""",
            [first, referenced],
        )
        cursor.execute("ANALYZE")


def time_query(rows, cutoff, timeout_s: float) -> tuple[float | None, set[int] | None]:
    """(seconds, ids) or (None, None) if cancelled past ``timeout_s``."""
    from django.db import OperationalError, connection, transaction

    try:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(f"SET LOCAL statement_timeout = {int(timeout_s * 1000)}")
            started = time.perf_counter()
            ids = set(rows.filter(given_at__lt=cutoff).values_list("pk", flat=True))
            return time.perf_counter() - started, ids
    except OperationalError as err:
        if "statement timeout" not in str(err):
            raise
        return None, None


def plan(rows, cutoff) -> str:
    from django.db import connection

    sql, params = rows.filter(given_at__lt=cutoff).values_list("pk", flat=True).query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + sql, params)
        lines = [line for (line,) in cursor.fetchall()]
    return "; ".join(line.strip() for line in lines if "SubPlan" in line or "Anti Join" in line or "Seq Scan" in line)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--consents", type=int, default=200_000)
    parser.add_argument("--checkins", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds before a query is cancelled")
    args = parser.parse_args(argv)

    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgresql://"):
        parser.error("set DATABASE_URL to a PostgreSQL server (postgresql://...): the comparison is PostgreSQL's")
    import psycopg

    name = f"bench_consent_purge_{os.getpid()}"
    base, _, _ = url.rpartition("/")
    with psycopg.connect(f"{base}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        os.environ["DATABASE_URL"] = f"{base}/{name}"
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "facesite.settings")
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connection
        from django.utils import timezone

        from privacy.services import unreferenced_consents

        call_command("migrate", verbosity=0)
        started = time.perf_counter()
        fill(args.consents, args.checkins)
        print(f"filled {args.consents} consents, {args.checkins} check-ins in {time.perf_counter() - started:.0f} s")
        with connection.cursor() as cursor:
            cursor.execute("SHOW work_mem")
            print(f"PostgreSQL {connection.pg_version}, work_mem {cursor.fetchone()[0]}")
        cutoff = timezone.now() - timedelta(days=30)
        queries = {"NOT IN (before)": not_in_consents(), "NOT EXISTS (now)": unreferenced_consents()}
        for label, rows in queries.items():
            print(f"{label} plan: {plan(rows, cutoff)}")
        times: dict[str, list[float | None]] = {label: [] for label in queries}
        answers: dict[str, set[int]] = {}
        for round_number in range(args.rounds):
            order = list(queries) if round_number % 2 == 0 else list(queries)[::-1]
            for label in order:
                seconds, ids = time_query(queries[label], cutoff, args.timeout)
                times[label].append(seconds)
                if ids is not None:
                    answers.setdefault(label, ids)
                    assert answers[label] == ids
                print(f"round {round_number + 1} {label}: " + (f"{seconds:.3f} s" if seconds is not None else "cancelled"))
        if len(answers) == 2:
            assert answers["NOT IN (before)"] == answers["NOT EXISTS (now)"], "the two queries disagree"
            compared = "the same ids from both"
        else:
            compared = "not compared: a query was cancelled every time"
        deleted = len(next(iter(answers.values()))) if answers else "?"
        print(f"\n{deleted} of {args.consents} consents unreferenced ({compared})")
        print("| query | median | runs |\n|---|---|---|")
        medians = {}
        for label, samples in times.items():
            done = [s for s in samples if s is not None]
            if len(done) == len(samples):
                medians[label] = statistics.median(done)
                print(f"| {label} | {medians[label]:.3f} s | {len(samples)} |")
            else:
                print(
                    f"| {label} | over {args.timeout:.0f} s ({len(samples) - len(done)} of {len(samples)} cancelled) | {len(samples)} |"
                )
        if len(medians) == 2:
            print(f"ratio before/now: {medians['NOT IN (before)'] / medians['NOT EXISTS (now)']:.1f}x")
        connection.close()
    finally:
        with psycopg.connect(f"{base}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
