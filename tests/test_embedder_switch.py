"""Switching the served embedder (recognition/embedder_switch.py): every enrolled face re-embedded in
the background, old and new evaluated side by side on the site's own people, switched only if not
worse (or forced), rolled back at once. Real models on the fixture gallery; the second embedder is
FaceNet of the mirrored crop ("facenet-mirrored"), as cheap as FaceNet and compared only with itself."""

import json
from datetime import timedelta

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.utils import timezone

from people.models import FaceEmbedding, FaceImage, GalleryChange
from recognition import embedder_switch, pipelines
from recognition.engine import embedder_eval
from recognition.models import EmbedderSwitch

from .conftest import PEOPLE, PROBES, person_named, read

MIRRORED = "facenet-mirrored"
pytestmark = pytest.mark.django_db


def recognize(api, path=PROBES / "obama1.jpg"):
    return api.post("/api/v1/recognize/", {"image": SimpleUploadedFile(path.name, read(path))}, format="multipart").json()


def switch_here(kind=MIRRORED, force=False, limit=None):
    """Start a switch and run it in this process (the worker's task body), as far as ``limit`` faces."""
    switch = embedder_switch.start_switch(kind, force=force, queue=False)
    outcome = embedder_switch.run_switch(switch.pk, limit=limit)
    switch.refresh_from_db()
    return switch, outcome


def names():
    return {kind: pipelines.pipeline_config(kind).embedder_name for kind in ("facenet", MIRRORED)}


def test_search_errors_count_genuine_and_impostor_searches_and_the_rule_tolerates_one_pair_on_a_small_gallery():
    a, b, c = np.eye(3, dtype=np.float32)
    near_a = (a + 0.3 * b) / np.linalg.norm(a + 0.3 * b)
    embeddings = np.stack([a, near_a, c, (c + 0.9 * a) / np.linalg.norm(c + 0.9 * a)])
    labels = np.array([1, 1, 2, 3])
    errors = embedder_eval.search_errors(embeddings, labels, threshold=0.7)
    # genuine: person 1's two faces find each other (0.96); impostor: faces 2 and 3 (two people) match each other at 0.74
    assert (errors.genuine_searches, errors.not_found) == (2, 0)
    assert (errors.impostor_searches, errors.false_accepts) == (4, 2)
    strict = embedder_eval.search_errors(embeddings, labels, threshold=0.99)
    assert strict.not_found == 2 and strict.false_accepts == 0 and strict.frr == 1.0
    # 100 searches of each kind: two more errors (one pair) are tolerated, three are not
    base = embedder_eval.SearchErrors(0.7, 100, 40, 100, 5, 100, 4)
    assert embedder_eval.not_worse(base, embedder_eval.SearchErrors(0.7, 100, 40, 100, 7, 100, 6))[0]
    ok, why = embedder_eval.not_worse(base, embedder_eval.SearchErrors(0.7, 100, 40, 100, 8, 100, 4))
    assert not ok and why.startswith("FRR rises from 5.00% to 8.00%")
    ok, why = embedder_eval.not_worse(base, embedder_eval.SearchErrors(0.7, 100, 40, 100, 5, 100, 7))
    assert not ok and why.startswith("FAR rises")
    assert embedder_eval.tolerance(100_000) == 0.005 and embedder_eval.tolerance(0) == 0.0


def test_a_switch_runs_in_the_background_is_evaluated_serves_the_new_embedder_and_rolls_back_at_once(
    admin_client, user_api, django_capture_on_commit_callbacks
):
    enrolled = FaceImage.objects.enrolled().count()
    old, new = names()["facenet"], names()[MIRRORED]
    assert pipelines.served_kind() == "facenet" and recognize(user_api)["embedder"] == old
    with django_capture_on_commit_callbacks(execute=True):  # the task runs as the django-q worker would (sync)
        response = admin_client.post("/admin/recognition/embedderswitch/start/", {"embedder": MIRRORED})
    assert response.status_code == 302
    switch = EmbedderSwitch.objects.get(embedder=MIRRORED)
    assert switch.status == "active", json.dumps([switch.note, switch.evaluation, switch.error])
    assert switch.done == switch.total == enrolled and switch.runs == 1
    assert switch.previous == "facenet" and switch.trigger == "admin" and switch.requested_by is not None
    evaluation = switch.evaluation
    assert evaluation["not_worse"] and evaluation["old"]["name"] == old and evaluation["new"]["name"] == new
    for role in ("old", "new"):  # 5 fixture people have 2-3 faces: 11 genuine searches; every face an impostor search
        assert evaluation[role]["genuine_searches"] == 11 and evaluation[role]["impostor_searches"] == enrolled
        assert evaluation[role]["threshold"] >= pipelines.match_threshold_floor(evaluation[role]["embedder"])
    # every enrolled face holds both embedders' templates; the served one is on the face's row
    assert FaceEmbedding.objects.filter(embedder=new).count() == FaceEmbedding.objects.filter(embedder=old).count() == enrolled
    assert set(FaceImage.objects.enrolled().values_list("embedder", flat=True)) == {new}
    assert GalleryChange.objects.filter(kind=GalleryChange.Kind.EMBEDDER).exists()
    # served at once, in this process and (through the change log) every other one
    body = recognize(user_api)
    assert body["embedder"] == new and body["gallery_size"] == enrolled and body["faces"][0]["match"]["name"] == "Barack Obama"
    page = admin_client.get("/admin/recognition/embedderswitch/").content.decode()
    assert "Served now: <strong>facenet-mirrored</strong>" in page and "Roll back to facenet" in page and "Not worse" in page

    started = timezone.now()
    with django_capture_on_commit_callbacks(execute=True):
        assert admin_client.post("/admin/recognition/embedderswitch/rollback/").status_code == 302
    assert (timezone.now() - started).total_seconds() < 5  # no re-embedding: the kept templates
    back = EmbedderSwitch.objects.active()
    assert (
        back.embedder == "facenet" and back.trigger == "rollback" and EmbedderSwitch.objects.get(pk=switch.pk).status == "retired"
    )
    assert set(FaceImage.objects.enrolled().values_list("embedder", flat=True)) == {old}
    body = recognize(user_api)
    assert body["embedder"] == old and body["faces"][0]["match"]["name"] == "Barack Obama"


def test_an_interrupted_switch_resumes_where_it_stopped_catches_up_new_faces_and_never_brings_back_a_deleted_face(
    staff_api, django_capture_on_commit_callbacks
):
    from people.services import delete_face
    from recognition.reembedding import store_embeddings

    new = names()[MIRRORED]
    # forced: this test is about the run (its evaluation is recorded all the same; the rule has its own tests)
    switch, outcome = switch_here(force=True, limit=5)  # the worker dies after five faces (each batch committed)
    assert outcome == "interrupted" and switch.status == "reembedding" and switch.done == 5
    assert pipelines.served_kind() == "facenet"  # nothing served changed
    # meanwhile: a face not yet embedded is deleted, and a new photo is enrolled (by the served FaceNet)
    waiting = embedder_switch.lacking(new).order_by("pk").first()
    delete_face(waiting)
    rudd = person_named("Paul Rudd")
    with django_capture_on_commit_callbacks(execute=True):
        added = staff_api.post(
            f"/api/v1/people/{rudd.pk}/faces/",
            {"image": SimpleUploadedFile("rudd.jpg", read(PEOPLE / "paul_rudd" / "1.jpg"))},
            format="multipart",
        ).json()["id"]
    assert FaceImage.objects.get(pk=added).status == "accepted"
    # a batch embedded before its face was deleted writes nothing for it
    vector = np.ones(128, np.float32) / np.sqrt(128)
    assert store_embeddings(new, {waiting.pk: vector}) == [] and not FaceEmbedding.objects.filter(face_id=waiting.pk).exists()

    # the worker stopped reporting: the watch puts it back in the queue and it continues (sync: here)
    EmbedderSwitch.objects.filter(pk=switch.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    with django_capture_on_commit_callbacks(execute=True):
        assert embedder_switch.resume_dead_switches() == [switch.pk]
    switch.refresh_from_db()
    assert switch.status == "active" and switch.runs == 2 and "Resumed" in switch.error, switch.note
    assert switch.evaluation["new"]["impostor_searches"] == switch.evaluation["old"]["impostor_searches"] > 0
    enrolled = FaceImage.objects.enrolled()
    assert switch.done == enrolled.count() and set(enrolled.values_list("embedder", flat=True)) == {new}
    assert FaceEmbedding.objects.filter(face_id=added, embedder=new).exists()
    assert not FaceImage.objects.filter(pk=waiting.pk).exists() and not FaceEmbedding.objects.filter(face_id=waiting.pk).exists()


def test_the_evaluation_blocks_a_worse_embedder_until_staff_force_it(settings, capsys):
    # the mirrored embedder served at a badly chosen threshold: it would miss every genuine search
    settings.FACE_MIRRORED_MATCH_THRESHOLD = 0.97
    switch, outcome = switch_here()
    assert outcome == "blocked" and switch.status == "blocked" and not switch.evaluation["not_worse"]
    assert switch.evaluation["new"]["not_found"] == switch.evaluation["new"]["genuine_searches"] == 11
    assert switch.evaluation["old"]["not_found"] < 11 and "FRR rises" in switch.note
    assert pipelines.served_kind() == "facenet" and EmbedderSwitch.objects.active().embedder == "facenet"
    assert set(FaceImage.objects.enrolled().values_list("embedder", flat=True)) == {names()["facenet"]}
    with pytest.raises(embedder_switch.SwitchRefused, match="no earlier embedder"):
        embedder_switch.rollback()  # the initial record has nothing before it

    call_command("switch_embedder", "--force-blocked", "--wait")
    switch.refresh_from_db()
    assert switch.status == "active" and switch.force and switch.note.startswith("Forced by staff")
    assert pipelines.served_kind() == MIRRORED and "FRR" in capsys.readouterr().out


def test_a_face_whose_photo_is_gone_is_re_embedded_from_its_stored_region_and_one_with_neither_is_reported(user_api):
    from recognition.reembedding import embed_stored

    obama = person_named("Barack Obama")
    region_only, neither = list(obama.faces.enrolled().order_by("pk"))[:2]
    assert region_only.region and region_only.region_box, "enrollment keeps the face region"
    from_photo = embed_stored([region_only], pipelines.pipeline(MIRRORED)).vectors[region_only.pk]
    FaceImage.objects.filter(pk=region_only.pk).update(image="")  # photo retention
    FaceImage.objects.filter(pk=neither.pk).update(image="", region="")  # enrolled before regions were kept

    switch, outcome = switch_here()
    assert outcome == "blocked" and switch.skipped == {"photo_gone": [neither.pk]}
    assert "could not be embedded" in switch.note
    kept = FaceEmbedding.objects.get(face_id=region_only.pk, embedder=switch.name)
    from_region = np.frombuffer(bytes(kept.vector), np.float32)
    assert float(from_region @ from_photo) > 0.95  # the same face, whether from the photo or the region

    embedder_switch.force_blocked(switch, queue=False)
    assert embedder_switch.run_switch(switch.pk) == "active"
    assert list(FaceImage.objects.lacking_served_embedder().values_list("pk", flat=True)) == [neither.pk]
    assert recognize(user_api)["faces"][0]["match"]["name"] == "Barack Obama"


def test_erasure_deletes_every_embedders_templates_and_the_region(staff_api, django_capture_on_commit_callbacks):
    from pathlib import Path

    from recognition.reembedding import embed_stored, store_embeddings

    biden = person_named("Joe Biden")
    faces = list(biden.faces.all())
    for face in faces:  # own copies: files are shared by the session, rows are rolled back
        for field in (face.image, face.crop, face.region):
            field.name = field.storage.save(field.name, field.open("rb"))
            field.close()
        FaceImage.objects.filter(pk=face.pk).update(image=face.image.name, crop=face.crop.name, region=face.region.name)
    store_embeddings(names()[MIRRORED], embed_stored(faces, pipelines.pipeline(MIRRORED)).vectors)
    assert FaceEmbedding.objects.filter(face__person=biden).count() == 2 * len(faces)
    regions = [Path(f.region.path) for f in faces]
    assert all(p.exists() for p in regions)
    with django_capture_on_commit_callbacks(execute=True):
        assert staff_api.delete(f"/api/v1/people/{biden.pk}/").status_code == 204
    assert not FaceEmbedding.objects.filter(face_id__in=[f.pk for f in faces]).exists()
    assert not any(p.exists() for p in regions)


def test_only_staff_with_the_switch_permission_may_switch_force_or_roll_back(client, django_user_model):
    from django.contrib.auth.models import Permission

    viewer = django_user_model.objects.create_user("viewer", password="viewer-pass-123", is_staff=True)
    client.force_login(viewer)
    assert client.get("/admin/recognition/embedderswitch/").status_code == 403  # staff without the view permission
    viewer.user_permissions.add(Permission.objects.get(codename="view_embedderswitch"))
    page = client.get("/admin/recognition/embedderswitch/")
    assert page.status_code == 200 and "needs the" in page.content.decode() and "Start switch" not in page.content.decode()
    for url in ("start/", "rollback/", "1/force/"):
        assert client.post(f"/admin/recognition/embedderswitch/{url}", {"embedder": MIRRORED}).status_code == 403
    assert not EmbedderSwitch.objects.filter(embedder=MIRRORED).exists()

    viewer.user_permissions.add(Permission.objects.get(codename="switch_embedder"))
    viewer = django_user_model.objects.get(pk=viewer.pk)  # permissions are cached per user object
    client.force_login(viewer)
    assert client.get("/admin/recognition/embedderswitch/start/").status_code == 403  # POST only
    response = client.post("/admin/recognition/embedderswitch/start/", {"embedder": "arcface"}, follow=True)
    assert "Unknown embedder" in response.content.decode()
    response = client.post("/admin/recognition/embedderswitch/rollback/", follow=True)
    assert "no earlier embedder" in response.content.decode()
    response = client.post("/admin/recognition/embedderswitch/999999/force/", follow=True)
    assert "No switch #999999" in response.content.decode()
    assert not EmbedderSwitch.objects.exclude(trigger="initial").exists()

    client.logout()
    assert client.post("/admin/recognition/embedderswitch/start/", {"embedder": MIRRORED}).status_code == 302  # to sign-in
    assert not EmbedderSwitch.objects.filter(embedder=MIRRORED).exists()


def test_the_setting_starts_a_switch_once_and_the_command_refuses_bad_requests(settings):
    from django.core.management.base import CommandError

    assert embedder_switch.follow_setting() is None  # FACE_EMBEDDER is what is served
    settings.FACE_EMBEDDER = MIRRORED
    assert pipelines.served_kind() == "facenet"  # the setting alone never changes what is served
    started = embedder_switch.follow_setting()
    assert started.embedder == MIRRORED and started.trigger == "setting" and started.status == "queued"
    assert embedder_switch.follow_setting() is None and EmbedderSwitch.objects.filter(embedder=MIRRORED).count() == 1
    with pytest.raises(CommandError, match="in progress"):
        call_command("switch_embedder", "facenet+dlib")
    with pytest.raises(CommandError, match="served now"):
        call_command("switch_embedder", "facenet")
    with pytest.raises(CommandError, match="Unknown embedder"):
        call_command("switch_embedder", "arcface")


@pytest.mark.servers
def test_a_real_switch_to_the_fused_embedder_runs_on_the_training_worker_and_the_web_process_follows(live_site):
    """The real switch facenet -> facenet+dlib across processes: queued by the command, run by the
    training cluster's qcluster, followed by a running web server through the change log; rolled back."""
    import time

    server = live_site.start_web()
    worker = live_site.start_worker(cluster="training")
    try:
        before = server.recognize(read(PROBES / "obama1.jpg")).json()
        assert before["faces"][0]["match"]["name"] == "Barack Obama"
        live_site.manage("switch_embedder", "facenet+dlib", "--force")  # forced: the evaluation is tested above
        deadline = time.monotonic() + 600
        status = ""
        while time.monotonic() < deadline and "facenet+dlib: Active (served)" not in status:
            assert worker.poll() is None, worker.log_path.read_text()[-3000:]
            time.sleep(2)
            status = live_site.manage("switch_embedder", "--status").stdout
        assert "facenet+dlib: Active (served)" in status and " new facenet+dlib " in status, status
        after = server.recognize(read(PROBES / "obama1.jpg")).json()  # the running web process follows
        assert after["embedder"] != before["embedder"] and "+dlib-resnet" in after["embedder"]
        assert after["faces"][0]["match"]["name"] == "Barack Obama"
        live_site.manage("switch_embedder", "--rollback")
        back = server.recognize(read(PROBES / "obama1.jpg")).json()
        assert back["embedder"] == before["embedder"] and back["faces"][0]["match"]["name"] == "Barack Obama"
    finally:
        live_site.stop(worker)
        live_site.stop(server.proc)


def test_a_switch_to_the_fused_embedder_without_a_readable_calibration_is_refused_and_leaves_no_row(
    settings, tmp_path, admin_client, caplog
):
    from django.core.management.base import CommandError

    committed = json.loads(open(settings.FACE_FUSION_CALIBRATION).read())
    no_thresholds = {k: v for k, v in committed.items() if k != "thresholds"}
    cases = {
        "missing": None,
        "not JSON": "{not json",
        "no cosine weight": json.dumps({"thresholds": committed["thresholds"]}),
        "no thresholds": json.dumps(no_thresholds),
    }
    for label, text in cases.items():
        path = tmp_path / f"{label}.json"
        if text is not None:
            path.write_text(text)
        settings.FACE_FUSION_CALIBRATION = str(path)
        # the admin button: a message on the page, not a server error
        page = admin_client.post("/admin/recognition/embedderswitch/start/", {"embedder": "facenet+dlib"}, follow=True)
        assert page.status_code == 200, label
        text = page.content.decode()
        assert "facenet+dlib cannot be served" in text.lower() and str(path) in text, label  # messages are capitalised
        # the command: an error, not a traceback
        with pytest.raises(CommandError, match="facenet\\+dlib cannot be served"):
            call_command("switch_embedder", "facenet+dlib")
        # the setting: logged on each watch, nothing started
        settings.FACE_EMBEDDER = "facenet+dlib"
        with caplog.at_level("ERROR", logger="recognition.embedder_switch"):
            assert embedder_switch.follow_setting() is None
        assert "is not followed" in caplog.text
        settings.FACE_EMBEDDER = "facenet"
        assert not EmbedderSwitch.objects.exclude(trigger="initial").exists(), label
        assert pipelines.served_kind() == "facenet"

    # a switch blocked earlier cannot be forced while its calibration is unreadable: it stays blocked
    blocked = EmbedderSwitch.objects.create(embedder="facenet+dlib", previous="facenet", status="blocked")
    page = admin_client.post(f"/admin/recognition/embedderswitch/{blocked.pk}/force/", follow=True)
    assert page.status_code == 200 and "facenet+dlib cannot be served" in page.content.decode().lower()
    blocked.refresh_from_db()
    assert blocked.status == "blocked" and not blocked.force

    # with the committed calibration the same request is taken (queued; not run here)
    settings.FACE_FUSION_CALIBRATION = str(tmp_path / "good.json")
    (tmp_path / "good.json").write_text(json.dumps(committed))
    EmbedderSwitch.objects.filter(pk=blocked.pk).delete()
    switch = embedder_switch.start_switch("facenet+dlib", queue=False)
    assert switch.status == "queued" and switch.name.endswith(f"-v{committed['cosine_weight']:.4f}")


def test_a_worker_is_dead_only_when_its_process_on_this_host_is_gone_and_its_switch_is_resumed():
    import os
    import socket
    import subprocess

    from training.services import worker_alive

    host = socket.gethostname()
    dead_pid = subprocess.Popen(["true"])  # a process that existed and is gone
    dead_pid.wait()
    assert worker_alive(f"{host}:{os.getpid()}")
    assert not worker_alive(f"{host}:{dead_pid.pid}")
    assert worker_alive(f"another-host:{dead_pid.pid}") and worker_alive("") and worker_alive(f"{host}:not-a-pid")

    # a switch whose worker process is gone is queued again although its heartbeat is fresh
    switch = EmbedderSwitch.objects.create(
        embedder=MIRRORED,
        name=names()[MIRRORED],
        previous="facenet",
        previous_name=names()["facenet"],
        status="reembedding",
        worker=f"{host}:{dead_pid.pid}",
        heartbeat_at=timezone.now(),
    )
    from unittest import mock

    with mock.patch.object(embedder_switch, "enqueue") as enqueue:  # the edge: the queue, not the judgement
        assert embedder_switch.resume_dead_switches() == [switch.pk]
    enqueue.assert_called_once_with(switch.pk)
    switch.refresh_from_db()
    assert switch.status == "queued" and "stopped at" in switch.error


def test_the_evaluation_reads_only_a_seeded_sample_of_whole_people_past_its_cap(settings, monkeypatch, admin_client, capsys):
    settings.EMBEDDER_SWITCH_EVAL_MAX_FACES = 6
    loaded = []
    real = embedder_switch._templates

    def counting(name, *args):
        vectors = real(name, *args)
        loaded.append(len(vectors))
        return vectors

    monkeypatch.setattr(embedder_switch, "_templates", counting)
    switch, outcome = switch_here(force=True)
    assert outcome == "active", switch.error
    evaluation = switch.evaluation
    enrolled = FaceImage.objects.enrolled()
    searched = evaluation["new"]["faces"]
    assert evaluation["sampled"] and evaluation["faces_both"] == enrolled.count() > searched >= 6
    assert evaluation["old"]["faces"] == searched and evaluation["gallery_size"] == enrolled.count()
    assert loaded == [searched, searched]  # never a template of a face outside the sample
    # whole people, the same ones every time (seeded), at most one person past the cap
    ids, people, both = embedder_switch.evaluation_sample(switch.previous_name, switch.name, 6)
    assert len(ids) == searched and both == enrolled.count()
    for person in set(people.tolist()):
        assert set(enrolled.filter(person_id=person).values_list("pk", flat=True)) == set(ids[people == person].tolist())
    largest = max(enrolled.filter(person_id=p).count() for p in set(people.tolist()))
    assert searched < 6 + largest
    again, _, _ = embedder_switch.evaluation_sample(switch.previous_name, switch.name, 6)
    assert again.tolist() == ids.tolist()
    everyone, _, _ = embedder_switch.evaluation_sample(switch.previous_name, switch.name, 10_000)
    assert len(everyone) == enrolled.count()
    # said where staff read the evaluation
    call_command("switch_embedder", "--status")
    assert f"searched {searched} of the {enrolled.count()} faces" in capsys.readouterr().out
    page = admin_client.get("/admin/recognition/embedderswitch/").content.decode()
    assert f"Searched {searched} of the {enrolled.count()} faces" in page


def test_the_served_templates_are_kept_chunk_by_chunk_each_face_once(monkeypatch):
    served = names()["facenet"]
    with_template = FaceImage.objects.filter(embedder=served, embedding__isnull=False)
    FaceEmbedding.objects.filter(embedder=served).delete()  # faces enrolled before the table, say
    monkeypatch.setattr(embedder_switch, "KEEP_CHUNK", 3)  # many chunks on the fixture gallery
    assert embedder_switch.keep_served_templates() == with_template.count() > 3 * 3
    kept = FaceEmbedding.objects.filter(embedder=served)
    assert sorted(kept.values_list("face_id", flat=True)) == sorted(with_template.values_list("pk", flat=True))
    face = with_template.order_by("pk").last()
    assert bytes(kept.get(face=face).vector) == bytes(face.embedding)
    assert embedder_switch.keep_served_templates() == 0  # nothing left to keep
