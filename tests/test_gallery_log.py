"""The gallery's change log and snapshots: each process asks one cheap question per request, applies
only the people that changed (also when numbers commit out of order), and starts from a
memory-mapped snapshot with the changes since applied on top."""

from __future__ import annotations

import contextlib
from datetime import timedelta

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test.utils import CaptureQueriesContext

from people import bulk
from people.models import FaceImage, GalleryChange, Person
from recognition import gallery as gallery_module
from recognition import services

from .conftest import PEOPLE, PROBES, person_named, read
from .test_erasure import session_files_restored  # noqa: F401  (erasures here delete real files)

pytestmark = pytest.mark.django_db


def another_process() -> gallery_module.GalleryCache:
    """A second copy of the gallery, as another web or task worker holds it (warmed up)."""
    cache = gallery_module.GalleryCache()
    cache.get()
    return cache


def import_synthetic(count: int, per_person: int = 5, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, 128)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    names = np.array([f"Synthetic {i // per_person}" for i in range(count)])
    data = bulk.Embeddings(names, vectors, services.pipeline().embedder_name, np.full(count, "", dtype="<U1"))
    bulk.import_embeddings(data, "explicit_consent")


def freshness_queries(cache) -> list[str]:
    with CaptureQueriesContext(connection) as queries:
        cache.get()
    return [q["sql"] for q in queries.captured_queries]


def test_the_freshness_check_is_one_query_on_the_change_log_whatever_the_gallery_size():
    small = another_process()
    at_small = freshness_queries(small)
    import_synthetic(20_000)
    large = another_process()
    assert len(large.get()) > 20_000
    at_large = freshness_queries(large)
    for queries in (at_small, at_large):
        # one indexed read of the log: never an aggregate over the faces or the people
        assert len(queries) == 1, queries
        assert "people_gallerychange" in queries[0] and "people_faceimage" not in queries[0], queries[0]
        assert "COUNT(" not in queries[0].upper() and "MAX(" not in queries[0].upper()


def test_each_change_reaches_another_process_which_rereads_only_that_person(staff_api, django_capture_on_commit_callbacks):
    from people import services as people

    other = another_process()
    obama, biden = person_named("Barack Obama"), person_named("Joe Biden")
    assert {obama.pk, biden.pk} <= other.get().person_ids

    def applied(change) -> set[int]:
        before = other.stats["people_applied"]
        with django_capture_on_commit_callbacks(execute=True):
            change()
        people = other.get().person_ids
        assert other.stats["cold_starts"] == 1, "a change must not reload the whole gallery"
        assert other.stats["people_applied"] - before <= 2, other.stats
        return people

    # deactivated over the API, then active again
    assert obama.pk not in applied(lambda: staff_api.patch(f"/api/v1/people/{obama.pk}/", {"is_active": False}, format="json"))
    assert obama.pk in applied(lambda: staff_api.patch(f"/api/v1/people/{obama.pk}/", {"is_active": True}, format="json"))
    # one face deleted: the person keeps the others
    face = FaceImage.objects.in_gallery().filter(person=obama).first()
    size = len(other.get())
    applied(lambda: people.delete_face(face))
    assert len(other.get()) == size - 1
    # a face re-processed and rejected through the task's failure path (a queryset update)
    second = FaceImage.objects.in_gallery().filter(person=obama).first()
    FaceImage.objects.filter(pk=second.pk).update(image="faces/missing-file.jpg")
    from recognition import tasks

    def fail_processing():
        try:
            tasks.process_face_image(second.pk)
        except Exception:
            pass

    applied(fail_processing)
    assert len(other.get()) == size - 2
    # erased over the API
    assert biden.pk not in applied(lambda: staff_api.delete(f"/api/v1/people/{biden.pk}/"))
    # a small import names its people one by one
    newcomer = unit(np.random.default_rng(3).standard_normal(128))
    data = bulk.Embeddings(np.array(["New Person"]), newcomer[None], services.pipeline().embedder_name, np.array([""]))
    people_now = applied(lambda: bulk.import_embeddings(data, "explicit_consent"))
    assert Person.objects.get(name="New Person").pk in people_now


def test_an_enrollment_through_the_api_is_matched_by_another_process_on_its_next_request(
    staff_api, django_capture_on_commit_callbacks
):
    obama = person_named("Barack Obama")
    obama.is_active = False
    obama.save()
    other = another_process()
    subject = Person.objects.create(name="Obama Again", legal_basis="explicit_consent")
    photo = sorted((PEOPLE / "barack_obama").iterdir())[0]
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_api.post(f"/api/v1/people/{subject.pk}/faces/", {"image": SimpleUploadedFile(photo.name, read(photo))})
    assert response.status_code == 201 and FaceImage.objects.get(pk=response.json()["id"]).status == "accepted"
    query = services.pipeline().analyse(services.read_upload(read(PROBES / "obama1.jpg")))[0].embedding
    (result,) = other.get().search(query[None], top_k=1, threshold=services.match_threshold())
    assert result.match is not None and result.match.person_id == subject.pk
    assert other.stats["cold_starts"] == 1


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x)).astype(np.float32)


def test_a_change_committed_out_of_order_is_read_when_it_shows_up():
    """PostgreSQL can make seq 10 visible before seq 9; the process must not skip 9 for good."""
    from django.db import transaction

    # as after a long test run on PostgreSQL: a number a rolled-back transaction took, below the top
    with contextlib.suppress(RuntimeError), transaction.atomic():
        GalleryChange.objects.create(kind="snapshot")
        raise RuntimeError("rolled back")
    GalleryChange.objects.create(kind="snapshot")
    other = another_process()
    obama, biden = person_named("Barack Obama"), person_named("Joe Biden")
    top = other._state.seq
    # numbers other tests' rolled-back transactions took (PostgreSQL) are gaps from the start: not these
    earlier = set(other._state.gaps)
    # seq top+2 commits first (Obama deactivated)...
    Person.objects.filter(pk=obama.pk).update(is_active=False)
    GalleryChange.objects.create(seq=top + 2, kind="person", person_id=obama.pk)
    people = other.get().person_ids
    assert obama.pk not in people and biden.pk in people
    assert top + 1 in other._state.gaps
    # ...then seq top+1 (Biden deactivated) becomes visible: it is still applied
    Person.objects.filter(pk=biden.pk).update(is_active=False)
    GalleryChange.objects.create(seq=top + 1, kind="person", person_id=biden.pk)
    assert biden.pk not in other.get().person_ids
    assert set(other._state.gaps) == earlier
    # and a number that never commits (a rolled-back transaction) is given up after a while
    GalleryChange.objects.create(seq=top + 4, kind="snapshot")
    other.get()
    assert set(other._state.gaps) - earlier == {top + 3}
    other._state.gaps[top + 3] -= gallery_module.GAP_SECONDS + 1
    other.get()
    assert set(other._state.gaps) == earlier


def test_old_change_log_rows_are_pruned_and_the_newest_is_kept(settings):
    from django.utils import timezone

    from people.tasks import prune_gallery_changes

    GalleryChange.objects.record("face", [1, 2, 3])
    GalleryChange.objects.update(created_at=timezone.now() - timedelta(hours=settings.GALLERY_CHANGE_KEEP_HOURS + 1))
    newest = GalleryChange.objects.order_by("-seq").first().seq
    assert prune_gallery_changes() >= 2
    assert set(GalleryChange.objects.values_list("seq", flat=True)) == {newest}  # the log's position survives
    fresh = GalleryChange.objects.create(kind="face", person_id=4)
    assert prune_gallery_changes() == 1
    assert set(GalleryChange.objects.values_list("seq", flat=True)) == {fresh.seq}


def test_a_process_starts_from_the_snapshot_and_applies_the_changes_since(staff_api, django_capture_on_commit_callbacks):
    import os
    import stat

    report = services.write_snapshot(force=True)
    assert report.written and report.faces == len(FaceImage.objects.in_gallery())
    root = gallery_module.snapshot_dir()
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
    generation = root / gallery_module._current_generation()
    assert all(stat.S_IMODE(os.stat(p).st_mode) == 0o600 for p in generation.iterdir())

    obama = person_named("Barack Obama")
    with django_capture_on_commit_callbacks(execute=True):
        staff_api.patch(f"/api/v1/people/{obama.pk}/", {"is_active": False}, format="json")
    started = gallery_module.GalleryCache()
    served = started.get()
    assert started.stats["from_snapshot"] == 1 and served.index.frozen
    assert obama.pk not in served.person_ids and len(served) == len(FaceImage.objects.in_gallery())
    with django_capture_on_commit_callbacks(execute=True):
        staff_api.patch(f"/api/v1/people/{obama.pk}/", {"is_active": True}, format="json")
    assert obama.pk in started.get().person_ids  # an overlay on the mapped snapshot

    services.invalidate_gallery()  # the API's own copy, started from the snapshot
    before = dict(services._gallery_cache.stats)  # the process's counters: earlier tests loaded it too
    response = staff_api.post("/api/v1/recognize/", {"image": SimpleUploadedFile("o.jpg", read(PROBES / "obama1.jpg"))})
    assert response.status_code == 200 and response.json()["faces"][0]["match"]["name"] == "Barack Obama"
    after = services._gallery_cache.stats
    assert (after["from_snapshot"] - before["from_snapshot"], after["from_database"] - before["from_database"]) == (1, 0)


def test_an_erasure_rewrites_the_snapshot_and_other_processes_move_to_it(staff_api, django_capture_on_commit_callbacks):
    services.write_snapshot(force=True)
    other = gallery_module.GalleryCache()
    other.get()
    old_generation = other._state.generation
    biden = person_named("Joe Biden")
    theirs = [bytes(f.embedding) for f in FaceImage.objects.in_gallery().filter(person=biden)]
    root = gallery_module.snapshot_dir()
    assert any(e in (root / old_generation / "index.faiss").read_bytes() for e in theirs)
    with django_capture_on_commit_callbacks(execute=True):
        assert staff_api.delete(f"/api/v1/people/{biden.pk}/").status_code == 204
    for path in root.rglob("*"):
        if path.is_file():
            assert not any(e in path.read_bytes() for e in theirs), path
    assert not (root / old_generation).exists()
    assert biden.pk not in other.get().person_ids
    assert other._state.generation != old_generation and other._state.generation == gallery_module._current_generation()


def snapshot_holds(embedding: bytes) -> bool:
    """Whether any file of any snapshot generation on disk contains these embedding bytes."""
    return any(embedding in path.read_bytes() for path in gallery_module.snapshot_dir().rglob("*") if path.is_file())


def gallery_faces(name: str) -> list[FaceImage]:
    return list(FaceImage.objects.in_gallery().filter(person=person_named(name)).order_by("pk"))


def test_a_deleted_photo_leaves_the_snapshot_on_disk_when_the_delete_commits(staff_api, django_capture_on_commit_callbacks):
    services.write_snapshot(force=True)
    other = another_process()
    obama = person_named("Barack Obama")
    kept, deleted = gallery_faces("Barack Obama")[:2]
    assert snapshot_holds(bytes(deleted.embedding)) and snapshot_holds(bytes(kept.embedding))
    with django_capture_on_commit_callbacks(execute=True):
        assert staff_api.delete(f"/api/v1/people/{obama.pk}/faces/{deleted.pk}/").status_code == 204
    assert not snapshot_holds(bytes(deleted.embedding))  # no waiting for the scheduled rewrite
    assert snapshot_holds(bytes(kept.embedding))  # only that photo: the person keeps the others
    served = other.get()
    assert other._state.generation == gallery_module._current_generation()  # moved to the rewritten file
    assert obama.pk in served.person_ids and len(served) == FaceImage.objects.in_gallery().count()
    started = gallery_module.GalleryCache()  # a process starting now, from the rewritten snapshot
    assert len(started.get()) == FaceImage.objects.in_gallery().count() and started.stats["from_snapshot"] == 1
    response = staff_api.post("/api/v1/recognize/", {"image": SimpleUploadedFile("o.jpg", read(PROBES / "obama1.jpg"))})
    assert response.json()["faces"][0]["match"]["name"] == "Barack Obama"

    # a person's last photo: they leave the snapshot's people too
    only = [p for p in Person.objects.all() if len(gallery_faces(p.name)) == 1][0]
    (last,) = gallery_faces(only.name)
    with django_capture_on_commit_callbacks(execute=True):
        assert staff_api.delete(f"/api/v1/people/{only.pk}/faces/{last.pk}/").status_code == 204
    generation = gallery_module.snapshot_dir() / gallery_module._current_generation()
    assert only.pk not in np.load(generation / "people.npy").tolist() and not snapshot_holds(bytes(last.embedding))
    assert only.pk not in gallery_module.GalleryCache().get().person_ids


def test_the_admins_bulk_delete_of_photos_rewrites_the_snapshot_once(staff_user, client, django_capture_on_commit_callbacks):
    services.write_snapshot(force=True)
    faces = gallery_faces("Barack Obama")[:2] + gallery_faces("Joe Biden")[:1]
    before = GalleryChange.objects.filter(kind=GalleryChange.Kind.SNAPSHOT).count()
    client.force_login(staff_user)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/admin/people/faceimage/", {"action": "delete_selected", "_selected_action": [f.pk for f in faces], "post": "yes"}
        )
    assert response.status_code == 302 and not FaceImage.objects.filter(pk__in=[f.pk for f in faces]).exists()
    assert not any(snapshot_holds(bytes(f.embedding)) for f in faces)
    assert GalleryChange.objects.filter(kind=GalleryChange.Kind.SNAPSHOT).count() - before == 1  # one rewrite


def test_a_rolled_back_delete_keeps_the_photo_in_the_snapshot(django_capture_on_commit_callbacks):
    from django.db import transaction

    from people import services as people_services

    services.write_snapshot(force=True)
    undone, done = gallery_faces("Joe Biden")[:2]
    undone_pk = undone.pk
    with django_capture_on_commit_callbacks(execute=True):
        with transaction.atomic():
            with pytest.raises(RuntimeError), transaction.atomic():
                people_services.delete_face(undone)
                raise RuntimeError("the request failed after the delete")
            people_services.delete_face(done)
    assert FaceImage.objects.filter(pk=undone_pk).exists() and snapshot_holds(bytes(undone.embedding))
    assert not snapshot_holds(bytes(done.embedding))


def test_a_photo_deleted_while_a_snapshot_is_built_is_not_in_it(monkeypatch, django_capture_on_commit_callbacks):
    from people import services as people_services

    victim = gallery_faces("Joe Biden")[0]
    read_rows = gallery_module._gallery_rows

    def rows_then_delete():
        rows = read_rows()  # the build has read the victim's embedding ...
        with django_capture_on_commit_callbacks(execute=True):
            people_services.delete_face(victim)  # ... which is deleted before the build is published
        return rows

    monkeypatch.setattr(gallery_module, "_gallery_rows", rows_then_delete)
    report = services.write_snapshot(force=True)
    assert report.written and not snapshot_holds(bytes(victim.embedding))
    monkeypatch.undo()
    assert len(gallery_module.GalleryCache().get()) == FaceImage.objects.in_gallery().count()
