"""The fused embedder (FaceNet + dlib's descriptor, FACE_EMBEDDER=facenet+dlib) served end to end:
real models on the fixture photos, the fixture gallery re-embedded with `reembed_faces`."""

import json

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command

from recognition.engine.images import decode_image
from recognition.engine.pipeline import PipelineConfig, shared_pipeline

from .conftest import PEOPLE, PROBES, read

PHOTOS = {
    "obama": PEOPLE / "barack_obama" / "obama.jpg",
    "obama2": PEOPLE / "barack_obama" / "obama2.jpg",
    "biden": PEOPLE / "joe_biden" / "biden.jpg",
}


def test_fused_templates_are_256_d_closer_for_the_same_person_and_a_weighted_cosine_sum():
    v = 0.3
    fused = shared_pipeline(PipelineConfig(embedder="facenet+dlib", fusion_weight=v))
    plain = shared_pipeline(PipelineConfig())
    assert fused.embedder is plain.embedder  # FaceNet's weights are loaded once
    templates, facenet, dlib = {}, {}, {}
    for name, path in PHOTOS.items():
        rgb = decode_image(read(path))
        face = fused.analyse(rgb, max_faces=1)[0]
        templates[name] = face.embedding
        facenet[name] = plain.analyse(rgb, faces=[face.face])[0].embedding
        dlib[name] = fused.fused.descriptor.describe(rgb, [face.face])[0]
    assert fused.dim == 256 and templates["obama"].shape == (256,) and templates["obama"].dtype == np.float32
    assert np.linalg.norm(templates["obama"]) == pytest.approx(1.0, abs=1e-5)
    assert templates["obama"] @ templates["obama2"] > templates["obama"] @ templates["biden"] + 0.1
    for a, b in [("obama", "obama2"), ("obama", "biden")]:
        weighted = v * facenet[a] @ facenet[b] + (1 - v) * dlib[a] @ dlib[b]
        assert templates[a] @ templates[b] == pytest.approx(weighted, abs=1e-5)
    assert fused.embedder_name.startswith(plain.embedder_name + "+dlib-resnet-v1-128-landmarks-v0.3000")


def test_an_unknown_embedder_or_a_fused_one_without_its_weight_is_refused():
    with pytest.raises(ValueError, match="unknown embedder"):
        PipelineConfig(embedder="arcface")
    with pytest.raises(ValueError, match="cosine weight"):
        PipelineConfig(embedder="facenet+dlib")


def recognize(api, path):
    return api.post("/api/v1/recognize/", {"image": SimpleUploadedFile(path.name, read(path))}, format="multipart")


@pytest.mark.django_db
def test_serving_the_fused_embedder_matches_only_faces_re_embedded_for_it(settings, user_api, client, admin_client):
    from people.models import FaceImage
    from recognition import pipelines, services

    enrolled = FaceImage.objects.in_gallery().count()
    calibration = json.loads(open(settings.FACE_FUSION_CALIBRATION).read())
    settings.FACE_EMBEDDER = "facenet+dlib"
    # the fixture gallery was embedded by FaceNet alone: nothing is matched, and the site says why
    assert FaceImage.objects.in_gallery().count() == 0
    assert FaceImage.objects.lacking_served_embedder().count() == enrolled
    page = admin_client.get("/admin/training/modelversion/").content.decode()
    assert "FACE_EMBEDDER facenet+dlib" in page and f"<code>manage.py reembed_faces</code>: {enrolled:,}." in page
    assert "embedder" not in client.get("/healthz/").json()  # public: no gallery figures
    body = recognize(user_api, PROBES / "obama1.jpg").json()
    assert body["embedder"].endswith(f"-v{calibration['cosine_weight']:.4f}") and body["gallery_size"] == 0
    assert body["faces"][0]["match"] is None

    # one face's photo is gone (retention): reported, not guessed
    gone = FaceImage.objects.enrolled().filter(person__name="Shea Whigham").first()
    FaceImage.objects.filter(pk=gone.pk).update(image="")
    report = _reembed()
    assert report.reembedded == enrolled - 1 and report.photo_gone == [gone.pk] and report.lacking_after == 1

    body = recognize(user_api, PROBES / "obama_and_biden.jpg").json()
    assert sorted(f["match"]["name"] for f in body["faces"] if f["match"]) == ["Barack Obama", "Joe Biden"]
    assert body["gallery_size"] == enrolled - 1 and services.gallery().dim == 256
    assert body["threshold"] >= pipelines.match_threshold_floor() == calibration["thresholds"]["match"]
    assert body["faces"][0]["candidates"][0]["similarity"] > body["threshold"]
    strangers = recognize(user_api, PROBES / "multiface.jpg").json()
    assert all(face["match"] is None for face in strangers["faces"])

    # the verify endpoint answers at the fused verify threshold
    response = user_api.post(
        "/api/v1/verify/",
        {
            "image1": SimpleUploadedFile("a.jpg", read(PHOTOS["obama"])),
            "image2": SimpleUploadedFile("b.jpg", read(PROBES / "obama1.jpg")),
        },
        format="multipart",
    )
    assert response.json()["verified"] is True and response.json()["threshold"] == calibration["thresholds"]["verify"]

    # back to FaceNet: one embedding per face, so only the face that could not be re-embedded is
    # FaceNet's; the others wait for reembed_faces again
    settings.FACE_EMBEDDER = "facenet"
    assert list(FaceImage.objects.in_gallery().values_list("pk", flat=True)) == [gone.pk]
    assert recognize(user_api, PROBES / "obama1.jpg").json()["faces"][0]["match"] is None


def _reembed():
    from recognition.reembedding import reembed_faces

    return reembed_faces(batch=8)


@pytest.mark.django_db
def test_reembed_faces_is_resumable_and_says_what_it_did(settings, capsys):
    from people.models import FaceImage

    settings.FACE_EMBEDDER = "facenet+dlib"
    lacking = FaceImage.objects.lacking_served_embedder().count()
    call_command("reembed_faces", "--limit", "2", "--batch", "1")  # interrupted after two faces
    assert FaceImage.objects.lacking_served_embedder().count() == lacking - 2
    assert f"2 of {lacking} faces re-embedded" in capsys.readouterr().out
    assert FaceImage.objects.in_gallery().count() == 2
    assert all(len(bytes(f.embedding)) == 256 * 4 for f in FaceImage.objects.in_gallery())


@pytest.mark.django_db
def test_a_fused_site_sends_edge_devices_no_gallery_they_cannot_match(settings, kiosk, staff_user):
    from rest_framework.test import APIClient

    from security.models import ApiKey

    _, raw = ApiKey.issue(staff_user, "front door edge", role="kiosk", kiosk=kiosk)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    assert api.get("/api/v1/edge/gallery/").status_code == 200
    settings.FACE_EMBEDDER = "facenet+dlib"
    response = api.get("/api/v1/edge/gallery/")
    assert response.status_code == 409 and response.json()["error"]["code"] == "edge_unavailable"
