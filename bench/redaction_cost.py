"""What a deleted photo's redaction task costs at a large gallery (training.redaction.forget_deleted_faces).

    .venv/bin/python -m bench.redaction_cost [--faces 100000] [--versions 10]

A throwaway SQLite site (temporary folder): ``--faces`` photo rows (5 per person, synthetic unit
embeddings, no image files) and ``--versions`` finished model versions, each with the label map a
run writes for them (an edge gallery row per photo: rounded embedding, person index, photo id; the
size a real map has). Photos are deleted with raw SQL (no signal), then the task is timed, as the
django-q worker runs it:

- a photo added after every version finished, as the task ran before (``face_ids`` only: every
  map parsed, none rewritten) and as it runs now (``since``: no map read);
- a photo every version was trained on (every map parsed and rewritten, now as before).

``--versions`` 10 is ``TRAINING_KEEP_VERSIONS``'s default: before retention a site kept every
version, one per debounced retrain, and each deletion paid for all of them.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import timedelta

from bench.scratch_site import scratch_site


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faces", type=int, default=100_000)
    parser.add_argument("--versions", type=int, default=10)
    args = parser.parse_args(argv)

    base = scratch_site("redaction-bench-")
    import numpy as np
    from django.core.files.base import ContentFile
    from django.utils import timezone

    from people.models import FaceImage, Person
    from training import redaction
    from training.engine.export import sha256_bytes
    from training.models import ModelVersion

    n, people = args.faces, args.faces // 5
    print(f"site {base}: {n} photos of {people} people, {args.versions} versions; load {os.getloadavg()[0]:.2f}")
    Person.objects.bulk_create([Person(name=f"person {i}") for i in range(people)], batch_size=5000)
    person_ids = list(Person.objects.order_by("pk").values_list("pk", flat=True))
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, 128)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    FaceImage.objects.bulk_create(
        [
            FaceImage(person_id=person_ids[i // 5], status="accepted", embedding=vectors[i].tobytes(), embedder="facenet")
            for i in range(n)
        ],
        batch_size=5000,
    )
    now = timezone.now()
    FaceImage.objects.update(created_at=now - timedelta(days=2))
    face_ids = list(FaceImage.objects.order_by("pk").values_list("pk", flat=True))
    labels = {
        "people": [{"index": i, "person_id": pid, "name": f"person {i}"} for i, pid in enumerate(person_ids)],
        "gallery": {
            "labels": [i // 5 for i in range(n)],
            "embeddings": np.round(vectors, 6).tolist(),
            "faces": face_ids,
        },
    }
    content = json.dumps(labels, separators=(",", ":")).encode()
    print(f"label map: {len(content) / 2**20:.0f} MB")
    for number in range(1, args.versions + 1):
        version = ModelVersion(number=number, status="retired", embedder="facenet", finished_at=now - timedelta(days=1))
        version.labels.save("labels.json", ContentFile(content), save=False)
        version.labels_sha256 = sha256_bytes(content)
        version.save()
    new = FaceImage.objects.create(person_id=person_ids[0], status="accepted", embedding=vectors[0].tobytes())

    def timed(what, face, since):
        FaceImage.objects.filter(pk=face)._raw_delete("default")
        started = time.perf_counter()
        counts = redaction.forget_deleted_faces([face], since)
        seconds = time.perf_counter() - started
        print(f"| {what} | {seconds:.1f} s | {counts} |", flush=True)
        return seconds

    print("| deleted photo, task | seconds | rewritten |")
    print("|---|---|---|")
    before = timed("added after every version; as before (ids only: every map parsed)", new.pk, None)
    newer = FaceImage.objects.create(person_id=person_ids[0], status="accepted", embedding=vectors[1].tobytes())
    now_ = timed("added after every version; now (since: no map read)", newer.pk, newer.created_at.isoformat())
    old = timed("in every version (every map parsed and rewritten)", face_ids[7], (now - timedelta(days=2)).isoformat())
    print(f"new photo: {before / max(now_, 1e-6):.0f}x faster; an old photo costs {old / args.versions:.1f} s per version")


if __name__ == "__main__":
    main()
