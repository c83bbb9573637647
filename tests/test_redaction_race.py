"""Two redactions of one model version at once (an erasure in one process, a deleted photo's in
another) never write back what the other took out: each reads the label map under the version
row's lock, after the other committed. Real processes on the live site's database."""

from __future__ import annotations

import json
import time

import pytest

SETUP = """
import json
from django.core.files.base import ContentFile
from people.models import FaceImage, Person
from training.models import ModelVersion
erased, kept = Person.objects.create(name="Race Erased"), Person.objects.create(name="Race Kept")
faces = [FaceImage.objects.create(person=p, image=f"race/{p.pk}.jpg", status="accepted") for p in (erased, kept, kept)]
labels = {
    "version": 0,
    "people": [{"index": 0, "person_id": erased.pk, "name": erased.name}, {"index": 1, "person_id": kept.pk, "name": kept.name}],
    "gallery": {"labels": [0, 1, 1], "embeddings": [[0.1] * 128, [0.2] * 128, [0.3] * 128], "faces": [f.pk for f in faces]},
}
version = ModelVersion.objects.create(number=ModelVersion.next_number(), status="ready")
version.labels.save("labels.json", ContentFile(json.dumps(labels).encode()), save=True)
print(json.dumps({"version": version.pk, "erased": erased.pk, "deleted_face": faces[2].pk}))
"""

# A photo's deletion whose redaction is slow: it reads the label map, then takes 8 s to write it back.
SLOW_PHOTO_REDACTION = """
import sys, time
from people.models import FaceImage
from training import redaction
from training.models import ModelVersion
read = redaction._read_artifact
def slow_read(field):
    data = read(field)
    print("read", flush=True)
    time.sleep(8)
    return data
redaction._read_artifact = slow_read
FaceImage.objects.filter(pk={face}).delete()
print(redaction.redact_deleted_faces(ModelVersion.objects.get(pk={version})), flush=True)
"""

ERASURE = """
from people.models import Person
from privacy.services import erase_person
print(erase_person(Person.objects.get(pk={person})).label_maps_rewritten, flush=True)
"""

READ_LABELS = """
from training.models import ModelVersion
with ModelVersion.objects.get(pk={version}).labels.open("rb") as fh:
    print(fh.read().decode())
"""


@pytest.mark.servers
@pytest.mark.django_db
def test_an_erasure_and_a_photos_redaction_at_once_both_hold(live_site):
    made = json.loads(live_site.manage("shell", "-v", "0", "-c", SETUP).stdout.strip().splitlines()[-1])
    slow = live_site.shell(SLOW_PHOTO_REDACTION.format(face=made["deleted_face"], version=made["version"]))
    try:
        assert slow.stdout.readline().strip() == "read", slow.stderr.read()  # it holds the version's lock now
        started = time.monotonic()
        erased = live_site.manage("shell", "-v", "0", "-c", ERASURE.format(person=made["erased"]), timeout=120)
        waited = time.monotonic() - started
        out, err = slow.communicate(timeout=60)
    finally:
        slow.kill()
    assert slow.returncode == 0, err
    assert "'faces_removed': 1" in out and erased.stdout.strip().splitlines()[-1] == "1"
    assert waited > 4, f"the erasure did not wait for the redaction holding the lock ({waited:.1f} s)"
    labels = json.loads(live_site.manage("shell", "-v", "0", "-c", READ_LABELS.format(version=made["version"])).stdout)
    # neither redaction undid the other: the erased person is gone, and so is the deleted photo
    assert [p["name"] for p in labels["people"]] == ["Race Kept"]
    assert made["deleted_face"] not in labels["gallery"]["faces"] and len(labels["gallery"]["faces"]) == 1
    assert labels["gallery"]["embeddings"] == [[0.2] * 128]
