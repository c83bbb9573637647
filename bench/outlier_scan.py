"""The site-wide outlier review at a large gallery: the scan in the request (before) against the scan
as a background task and the request reading its stored result (after).

    .venv/bin/python -m bench.outlier_scan [--faces 20000 100000] [--repeat 1] [--memory]

A throwaway SQLite site per size (temporary folder): ``--faces`` accepted gallery rows, 5 per person,
synthetic 128-d unit embeddings clustered per person (own cosine ~0.7, as real photos of one person
are), 1 % of them filed under the wrong person (the outliers a real site has); no image files.
FACE_OUTLIER_BOUND is 0.55 (the FaceNet match threshold). Timed, in this process:

- before: what GET /api/v1/outliers/ did in the request until now: ``recognition.outliers.outliers()``
  over the whole gallery, each outlier serialized with its rejections (the view's work, minus HTTP);
- the task: ``checkin.tasks.scan_outliers`` as the django-q worker runs it (scan and store);
- after: GET /api/v1/outliers/ through the Django test client as a staff user (the real view,
  authentication, permissions, the first page of 50 read from the stored rows, JSON).

``--memory``: the scan's peak Python memory (tracemalloc, numpy's arrays included), in one more scan.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import tracemalloc

from bench.scratch_site import scratch_site


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faces", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--repeat", type=int, default=1, help="scans timed per path (median)")
    parser.add_argument("--memory", action="store_true", help="also the scan's peak memory (one more scan, traced)")
    args = parser.parse_args(argv)
    scratch_site("outlier-scan-bench-", FACE_OUTLIER_BOUND="0.55", THROTTLE_STAFF="100000/min")

    rows = []
    for faces in args.faces:
        rows.append(measure(faces, args.repeat, args.memory))
    print()
    memory = " scan peak memory |" if args.memory else ""
    print(
        f"| gallery faces | flagged | before: GET scans in the request | task: scan + store | after: GET reads page 1 |{memory}"
    )
    print("|---|---|---|---|---|" + ("---|" if args.memory else ""))
    for r in rows:
        peak = f" {r['peak_mb']:.0f} MB |" if args.memory else ""
        print(
            f"| {r['faces']:,} | {r['flagged']:,} | {r['before']:.2f} s | {r['task']:.2f} s | {r['after'] * 1000:.1f} ms |{peak}"
        )


def make_gallery(faces: int) -> None:
    import numpy as np

    from people.models import FaceImage, Person
    from recognition import services
    from recognition.pipelines import served_embedder

    FaceImage.objects.all().delete()
    Person.objects.all().delete()
    people = faces // 5
    Person.objects.bulk_create([Person(name=f"person {i}") for i in range(people)], batch_size=5000)
    person_ids = list(Person.objects.order_by("pk").values_list("pk", flat=True))
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((people, 128)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    owners = np.arange(faces) // 5
    vectors = centres[owners] + rng.normal(0, 0.06, (faces, 128)).astype(np.float32)
    misfiled = rng.choice(faces, faces // 100, replace=False)  # 1 %: a photo of someone else
    vectors[misfiled] = centres[(owners[misfiled] + 1) % people] + rng.normal(0, 0.06, (len(misfiled), 128)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    embedder = served_embedder()
    FaceImage.objects.bulk_create(
        [
            FaceImage(person_id=person_ids[owners[i]], status="accepted", embedding=vectors[i].tobytes(), embedder=embedder)
            for i in range(faces)
        ],
        batch_size=5000,
    )
    services.invalidate_gallery()


def measure(faces: int, repeat: int, memory: bool) -> dict:
    from django.contrib.auth import get_user_model
    from django.test import Client

    from checkin import corrections, tasks
    from checkin.corrections import FaceReview
    from checkin.models import OutlierScan, RejectedMatch
    from checkin.serializers import FaceReviewSerializer
    from recognition import outliers, services

    make_gallery(faces)
    services.gallery()  # loaded once per process, as a web worker has it before the first request
    print(f"{faces:,} gallery faces; load {os.getloadavg()[0]:.2f}")

    def old_request() -> int:
        # checkin.corrections.site_review and the view as they were: the scan, then every outlier serialized
        found = outliers.outliers()
        through = RejectedMatch.faces.through.objects.filter(faceimage_id__in=[e.face_id for e in found])
        rejections: dict = {}
        for row in through.select_related("rejectedmatch", "rejectedmatch__kiosk"):
            rejections.setdefault(row.faceimage_id, []).append(row.rejectedmatch)
        return len(FaceReviewSerializer([FaceReview(e, rejections.get(e.face_id, [])) for e in found], many=True).data)

    before = timed(old_request, repeat)

    def task() -> None:
        OutlierScan.objects.all().delete()
        scan = OutlierScan.objects.create()
        tasks.scan_outliers(scan.pk)

    task_time = timed(task, repeat)
    scan = corrections.outlier_scan.latest()
    staff = get_user_model().objects.filter(username="bench-staff").first() or get_user_model().objects.create_user(
        "bench-staff", password="bench-pass-123", is_staff=True, is_superuser=True
    )
    client = Client()
    client.force_login(staff)

    def new_request() -> None:
        response = client.get("/api/v1/outliers/")
        assert response.status_code == 200 and response.json()["scan"]["id"] == scan.pk, response.content[:300]

    new_request()  # the first request signs in (session) and warms the URL resolver
    after = timed(new_request, max(repeat, 10))

    peak = float("nan")
    if memory:
        tracemalloc.start()
        outliers.site_scan()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    result = {"faces": faces, "flagged": scan.flagged, "before": before, "task": task_time, "after": after, "peak_mb": peak / 1e6}
    print(f"  {result}")
    return result


def timed(call, repeat: int) -> float:
    """Median wall time of ``repeat`` calls, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


if __name__ == "__main__":
    main()
