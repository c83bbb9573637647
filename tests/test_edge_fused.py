"""The edge kiosk on a site serving the fused embedder (FACE_EMBEDDER=facenet+dlib): the export holds
FaceNet's and dlib's networks as TFLite, the kiosk syncs and checks both, and makes the server's
fused templates offline. Real models on the fixture photos; the session's gallery re-embedded by a
real embedder switch."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from .conftest import PEOPLE, PROBES
from .test_edge_kiosk import kiosk_api, through_test_client  # noqa: F401 (kiosk_api: a fixture)

RULE = {"stable_frames": 4, "reembed_every": 3, "full_frame_every": 5, "min_face_px": 40}


def serve_fused_and_train(settings, capture_on_commit):
    """Switch the fixture gallery to the fused embedder and train a version with the edge export."""
    from django_q.models import Schedule

    from recognition import embedder_switch
    from training import services
    from training.models import ModelVersion

    switch = embedder_switch.start_switch("facenet+dlib", queue=False)
    assert embedder_switch.run_switch(switch.pk) == "active"
    ModelVersion.objects.all().delete()
    Schedule.objects.all().delete()
    settings.TRAINING_EXPORT_TFLITE = True  # both conversions cached in TRAINING_CACHE_DIR (the server runs the same files)
    settings.TRAINING_UNKNOWN_FACES_DIR = None
    settings.TRAINING_APPROACHES = []  # nearest neighbour alone
    with capture_on_commit(execute=True):
        version, _ = services.request_training(ModelVersion.Trigger.API)
    version.refresh_from_db()
    assert version.status == "active", version.error
    return version


def ready_names(recognizer, rgb, frames: int = 8) -> tuple[set, list]:
    """Who the kiosk checks in from ``frames`` frames of one photo (the server's multi-frame rule),
    and the last frame's tracks."""
    names = set()
    for _ in range(frames):
        tracks, ready = recognizer.process(rgb)
        for track in ready:
            track.checked_in = True
            names.add(recognizer.name(track.person_id))
    return names, tracks


@pytest.mark.django_db
def test_a_fused_site_exports_both_networks_and_the_kiosk_makes_the_servers_templates_and_names_people(
    kiosk_api,  # noqa: F811
    settings,
    django_capture_on_commit_callbacks,
    tmp_path,
):
    from django.core.files.base import ContentFile

    from edge.recognizer import EdgeRecognizer
    from edge.sync import DLIB_FILE, State, SyncError, sync
    from recognition import pipelines
    from recognition.engine.images import decode_image
    from training.models import ModelVersion

    version = serve_fused_and_train(settings, django_capture_on_commit_callbacks)
    calibration = json.loads(open(settings.FACE_FUSION_CALIBRATION).read())
    assert version.dlib_tflite.name == f"models/embedders/{version.dlib_tflite_sha256}.tflite"
    manifest = kiosk_api.get("/api/v1/edge/manifest/").json()["model"]
    assert manifest["dlib_tflite_sha256"] == version.dlib_tflite_sha256 and manifest["dlib_tflite_url"].endswith("/dlib-tflite/")

    server = through_test_client(kiosk_api)
    state = State(tmp_path / "kiosk")
    report = sync(server, state)
    assert report["model_changed"] and report["version"] == version.number and report["gallery_changes"] > 0
    pair = state.pair_dir
    labels = json.loads((pair / "labels.json").read_text())
    template = labels["template"]
    assert template["kind"] == "fused" and template["dim"] == 256 and labels["embedder"] == version.embedder
    assert template["cosine_weight"] == pytest.approx(round(calibration["cosine_weight"], 4))
    assert template["dlib"]["tflite_sha256"] == version.dlib_tflite_sha256 and template["dlib"]["chip"]["size"] == 150
    assert state.read()["gallery_embedder"] == version.embedder and state.gallery()[2].shape[1] == 256
    gallery = kiosk_api.get("/api/v1/edge/gallery/", {"pages": 1}).json()
    assert gallery["dim"] == 256 and len(base64.b64decode(gallery["faces"][0]["embedding"])) == 256 * 4

    # the device's templates are the server's, from the same detections
    recognizer = EdgeRecognizer(pair, state.gallery(), state.read()["names"], RULE, state.read()["gallery_embedder"])
    served = pipelines.pipeline()
    cosines = []
    for path in (PEOPLE / "barack_obama" / "obama.jpg", PEOPLE / "joe_biden" / "biden.jpg", PROBES / "obama_and_biden.jpg"):
        rgb = decode_image(path.read_bytes())
        faces = served.analyse(rgb)
        device = recognizer.pipeline.analyse(rgb, [f.face for f in faces])
        cosines += [float(f.embedding @ d.embedding) for f, d in zip(faces, device)]
        assert all(d.embedding.shape == (256,) for d in device)
    assert len(cosines) >= 4 and min(cosines) >= 0.999, cosines

    # a held-out photo of an enrolled person is named; strangers are not
    assert ready_names(recognizer, decode_image((PROBES / "obama1.jpg").read_bytes()))[0] == {"Barack Obama"}
    names, tracks = ready_names(recognizer, decode_image((PROBES / "multiface.jpg").read_bytes()))
    assert names == set() and len(tracks) == 6 and all(t.person_id is None for t in tracks)

    # the next version's dlib file is not what the manifest announces: the kiosk keeps its pair
    tampered = bytearray(version.dlib_tflite.read())
    version.dlib_tflite.close()
    tampered[len(tampered) // 2] ^= 0xFF
    labels["version"] = version.number + 1
    version.pk, version.number, version.status = None, version.number + 1, ModelVersion.Status.READY
    version.labels.save("labels.json", ContentFile(json.dumps(labels).encode()), save=False)
    version.labels_sha256 = hashlib.sha256(json.dumps(labels).encode()).hexdigest()
    version.dlib_tflite.save("tampered-dlib.tflite", ContentFile(bytes(tampered)), save=False)
    version.save()
    version.activate()
    with pytest.raises(SyncError, match=f"{DLIB_FILE} has sha256"):
        sync(server, state)
    assert state.pair_dir == pair and state.version == version.number - 1
    assert (pair / DLIB_FILE).exists() and not list((state.root / "pairs").glob(".partial-*"))


@pytest.mark.django_db
def test_after_an_embedder_switch_the_kiosk_fetches_the_whole_gallery_in_the_new_embedders_templates(
    kiosk_api,  # noqa: F811
    tmp_path,
):
    from edge.sync import State, sync_gallery
    from people.models import FaceImage
    from recognition import embedder_switch

    server, state = through_test_client(kiosk_api), State(tmp_path / "kiosk")
    faces = FaceImage.objects.in_gallery().count()
    assert sync_gallery(server, state) == faces and state.gallery()[2].shape == (faces, 128)
    facenet = state.read()["gallery_embedder"]
    assert sync_gallery(server, state) == 0  # nothing changed since the cursor

    switch = embedder_switch.start_switch("facenet+dlib", queue=False)
    assert embedder_switch.run_switch(switch.pk) == "active"
    assert sync_gallery(server, state) == faces
    ids, _, embeddings = state.gallery()
    assert embeddings.shape == (faces, 256) and len(ids) == faces
    assert state.read()["gallery_embedder"] not in (None, facenet)
