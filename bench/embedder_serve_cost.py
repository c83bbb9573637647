"""What the last step of an embedder switch costs at gallery scale: the one UPDATE that serves the
new embedder's templates (``embedder_switch._serve``), on a synthetic gallery (issue 15 part 2).

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/NAME .venv/bin/python -m bench.embedder_serve_cost --faces 100000

The database must be an empty one of your own (it is migrated and filled). N faces are imported
with the product's ``import_embeddings`` (random L2-normalised 128-d templates under FaceNet's
name, 4 faces per person), kept as FaceEmbedding rows (``keep_served_templates``, as a switch's
evaluation does), and given a second 256-d template under the fused embedder's name. Then, each in
its own transaction as a switch and a rollback run it: serve the fused templates, serve FaceNet's
again. Meanwhile another connection reads the gallery's templates (what recognize reloads) and
writes face rows, a random one each second (what enrollment and review do), to show who waits.
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--faces", type=int, default=100_000)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "facesite.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection, connections, transaction
    from django.utils import timezone

    from people import bulk
    from people.models import FaceEmbedding, FaceImage
    from recognition import embedder_switch, pipelines

    call_command("migrate", verbosity=0)
    if FaceImage.objects.exists():
        raise SystemExit("the database is not empty: give an empty database of your own")
    facenet = pipelines.pipeline_config("facenet").embedder_name
    fused = pipelines.pipeline_config("facenet+dlib").embedder_name
    print(f"{connection.vendor} {connection.settings_dict['NAME']}; {args.faces:,} faces; load {os.getloadavg()}")
    rng = np.random.default_rng(0)

    def unit(n, d):
        x = rng.standard_normal((n, d)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    started = time.perf_counter()
    names = np.array([f"person {i // 4:07d}" for i in range(args.faces)])
    bulk.import_embeddings(
        bulk.Embeddings(names=names, embeddings=unit(args.faces, 128), embedder=facenet, external_ids=np.full(args.faces, "")),
        "explicit_consent",
    )
    print(f"import_embeddings: {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    kept = embedder_switch.keep_served_templates()
    print(f"keep_served_templates: {kept:,} rows in {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    ids = list(FaceImage.objects.order_by("pk").values_list("pk", flat=True))
    template = FaceEmbedding(embedder=fused, dim=256, created_at=timezone.now(), vector=b"")
    for start in range(0, len(ids), 50_000):
        chunk = ids[start : start + 50_000]
        vectors = unit(len(chunk), 256)
        with transaction.atomic():
            bulk._insert_rows(FaceEmbedding, template, ("face_id", "vector"), zip(chunk, (v.tobytes() for v in vectors)), 5000)
    print(f"fused templates written: {len(ids):,} in {time.perf_counter() - started:.1f} s")
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")

    def concurrently(began: float, committed: threading.Event, report: dict) -> None:
        """Another connection while the UPDATE runs: a gallery read, then writes to one face row
        after another (a random face each second) until the commit; each one's duration."""
        try:
            time.sleep(0.5)
            rows = sum(1 for _ in FaceImage.objects.values_list("embedding", flat=True).iterator(5000))
            report["read"] = f"{rows:,} templates read, done at {time.perf_counter() - began:.1f} s"
            waits, pick = [], np.random.default_rng(1)
            while not committed.is_set():
                t = time.perf_counter()
                FaceImage.objects.filter(pk=ids[int(pick.integers(len(ids)))]).update(processed_at=timezone.now())
                waits.append(time.perf_counter() - t)
                time.sleep(1)
            waits = np.array(waits)
            report["writes"] = (
                f"{len(waits)} single-row writes, {(waits > 0.5).sum()} waited > 0.5 s, "
                f"longest {waits.max():.1f} s, median {np.median(waits) * 1000:.0f} ms"
            )
        except Exception as err:  # SQLite: "database is locked" after its busy timeout
            report["error"] = f"{type(err).__name__}: {err} at {time.perf_counter() - began:.1f} s"
        finally:
            connections.close_all()

    for label, name in (("switch (serve the fused templates)", fused), ("rollback (serve FaceNet's again)", facenet)):
        report, committed = {}, threading.Event()
        started = time.perf_counter()
        other = threading.Thread(target=concurrently, args=(started, committed, report))
        other.start()
        with transaction.atomic():
            served = embedder_switch._serve(name)
        seconds = time.perf_counter() - started
        committed.set()
        other.join()
        print(f"{label}: {served:,} faces in {seconds:.1f} s ({served / seconds:,.0f} faces/s), committed at {seconds:.1f} s")
        print(f"  meanwhile, another connection: {report}; load {os.getloadavg()}")


if __name__ == "__main__":
    main()
