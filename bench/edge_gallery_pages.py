"""What one kiosk poll of GET /api/v1/edge/gallery/ costs the server at a large gallery: the whole
answer of before beside the bounded pages of now.

    .venv/bin/python -m bench.edge_gallery_pages [--faces 100000] [--page 2000]

A throwaway SQLite site (temporary folder): ``--faces`` accepted photo rows (5 per person, synthetic
unit embeddings of the served embedder, no image files). Each answer is built and rendered to JSON
bytes as the view does, timed without tracing, then run again under tracemalloc for its peak memory:

- *before*: the view as it was (every changed face and the ids of every gallery face, one answer),
  copied here since the view is gone;
- *now*: ``checkin.edge_gallery.gallery_page`` and the view's encoding, page after page.

Two polls: a device's first sync (every face), and a poll where nothing changed (before: still the
id of every face; now: the change log since the cursor, and the keyset past it).
"""

from __future__ import annotations

import argparse
import os
import time
import tracemalloc

from bench.scratch_site import scratch_site


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faces", type=int, default=100_000)
    parser.add_argument("--page", type=int, default=2000)
    args = parser.parse_args(argv)

    base = scratch_site("edge-gallery-bench-", EDGE_GALLERY_PAGE_FACES=str(args.page))
    import base64

    import numpy as np
    from rest_framework.renderers import JSONRenderer

    from checkin.edge_gallery import face_json, gallery_page
    from people.models import FaceImage, Person
    from recognition.pipelines import pipeline_config, served_embedder

    n, people = args.faces, args.faces // 5
    Person.objects.bulk_create([Person(name=f"person {i}") for i in range(people)], batch_size=5000)
    person_ids = list(Person.objects.order_by("pk").values_list("pk", flat=True))
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, 128)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    embedder = served_embedder()
    FaceImage.objects.bulk_create(
        [
            FaceImage(person_id=person_ids[i // 5], status="accepted", embedding=vectors[i].tobytes(), embedder=embedder)
            for i in range(n)
        ],
        batch_size=5000,
    )
    config = pipeline_config()
    render = JSONRenderer().render
    print(f"site {base}: {n} faces of {people} people, pages of {args.page}; load {os.getloadavg()[0]:.2f}")

    def before(since):  # the view of before, body for body (less the validation of ``since``)
        from datetime import datetime

        faces = FaceImage.objects.in_gallery()
        ids = sorted(faces.values_list("id", flat=True))
        changed = faces.filter(updated_at__gt=datetime.fromisoformat(since)) if since else faces
        rows = list(changed.select_related("person").order_by("updated_at", "id"))
        latest = faces.order_by("-updated_at").values_list("updated_at", flat=True).first()
        answer = {
            "cursor": latest.isoformat() if latest else since,
            "full": not since,
            "embedder": config.embedder_name,
            "dim": config.dim,
            "faces": [
                {
                    "id": f.pk,
                    "person_id": f.person_id,
                    "name": f.person.name,
                    "embedding": base64.b64encode(bytes(f.embedding)).decode(),
                }
                for f in rows
            ],
            "ids": ids,
        }
        return answer["cursor"], False, render(answer)

    def now(since):
        page = gallery_page(since, args.page, config.embedder_name)
        answer = {**page, "embedder": config.embedder_name, "dim": config.dim, "faces": [face_json(f) for f in page["faces"]]}
        return page["cursor"], page["more"], render(answer)

    def poll(answer, since):
        """Every answer of one poll from ``since``: (seconds, peak MB of one answer, answers, bytes, cursor)."""
        seconds, count, size, cursor, more = 0.0, 0, 0, since, True
        while more:
            started = time.perf_counter()
            cursor, more, body = answer(cursor)
            seconds += time.perf_counter() - started
            count, size = count + 1, size + len(body)
        peak, cursor2, more = 0, since, True
        while more:  # again, traced: the peak of the largest answer
            tracemalloc.start()
            cursor2, more, body = answer(cursor2)
            peak = max(peak, tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
            del body
        return seconds, peak / 2**20, count, size / 2**20, cursor

    print("| poll | answer | answers | JSON MB | seconds (all answers) | peak MB (one answer, tracemalloc) |")
    print("|---|---|---|---|---|---|")
    for what, answer in (("before", before), ("now", now)):
        seconds, peak, count, size, cursor = poll(answer, None)
        print(f"| first sync | {what} | {count} | {size:.0f} | {seconds:.2f} | {peak:.0f} |", flush=True)
        seconds, peak, count, size, _ = poll(answer, cursor)
        print(f"| nothing changed | {what} | {count} | {size:.2f} | {seconds:.3f} | {peak:.1f} |", flush=True)


if __name__ == "__main__":
    main()
