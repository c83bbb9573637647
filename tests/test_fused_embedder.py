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
def test_switching_to_the_fused_embedder_re_embeds_the_gallery_and_serves_it_then_rolls_back(
    settings, user_api, admin_client, client, capsys
):
    """The real switch facenet -> facenet+dlib, run by ``manage.py switch_embedder --wait`` (the
    background task's body in this process): every enrolled face re-embedded with the fused
    embedder, evaluated side by side, served, and rolled back."""
    from people.models import FaceImage
    from recognition import pipelines, services
    from recognition.models import EmbedderSwitch

    enrolled = FaceImage.objects.in_gallery().count()
    calibration = json.loads(open(settings.FACE_FUSION_CALIBRATION).read())
    settings.FACE_EMBEDDER = "facenet+dlib"
    # the setting alone serves nothing new: FaceNet's gallery is matched until the switch is made
    assert FaceImage.objects.in_gallery().count() == enrolled and pipelines.served_kind() == "facenet"
    page = admin_client.get("/admin/training/modelversion/").content.decode()
    assert "FACE_EMBEDDER asks for facenet+dlib" in page and "<code>manage.py reembed_faces</code>: 0." in page
    assert "embedder" not in client.get("/healthz/").json()  # public: no gallery figures
    assert recognize(user_api, PROBES / "obama1.jpg").json()["faces"][0]["match"]["name"] == "Barack Obama"

    # one face kept neither its photo nor its region: reported, and the switch waits for staff
    gone = FaceImage.objects.enrolled().filter(person__name="Shea Whigham").first()
    FaceImage.objects.filter(pk=gone.pk).update(image="", region="")
    call_command("switch_embedder", "facenet+dlib", "--wait")
    switch = EmbedderSwitch.objects.get(embedder="facenet+dlib")
    assert switch.status == "blocked" and switch.skipped == {"photo_gone": [gone.pk]} and switch.done == enrolled - 1
    assert "FRR" in capsys.readouterr().out
    call_command("switch_embedder", "--force-blocked", "--wait")
    switch.refresh_from_db()
    assert switch.status == "active", switch.error
    new, old = switch.evaluation["new"], switch.evaluation["old"]
    assert new["threshold"] >= calibration["thresholds"]["match"] and old["threshold"] >= settings.FACE_MATCH_THRESHOLD

    body = recognize(user_api, PROBES / "obama_and_biden.jpg").json()
    assert body["embedder"].endswith(f"-v{calibration['cosine_weight']:.4f}")
    assert sorted(f["match"]["name"] for f in body["faces"] if f["match"]) == ["Barack Obama", "Joe Biden"]
    assert body["gallery_size"] == enrolled - 1 and services.gallery().dim == 256
    assert body["threshold"] >= pipelines.match_threshold_floor() == calibration["thresholds"]["match"]
    assert body["faces"][0]["candidates"][0]["similarity"] > body["threshold"]
    strangers = recognize(user_api, PROBES / "multiface.jpg").json()
    assert all(face["match"] is None for face in strangers["faces"])
    assert list(FaceImage.objects.lacking_served_embedder().values_list("pk", flat=True)) == [gone.pk]

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

    # back to FaceNet at once, from the kept templates: every face, the one the fused embedder missed too
    call_command("switch_embedder", "--rollback")
    assert FaceImage.objects.in_gallery().count() == enrolled and pipelines.served_kind() == "facenet"
    body = recognize(user_api, PROBES / "obama1.jpg").json()
    assert body["faces"][0]["match"]["name"] == "Barack Obama" and services.gallery().dim == 128


@pytest.mark.django_db
def test_reembed_faces_catches_up_faces_enrolled_by_another_embedder_and_is_resumable(settings, capsys, user_api):
    """A face enrolled while the mirrored FaceNet was served lacks FaceNet's template after a
    rollback: reembed_faces embeds it (batch by batch, resumable), and copies the kept templates."""
    from people.models import FaceImage
    from recognition import embedder_switch

    switch = embedder_switch.start_switch("facenet-mirrored", queue=False)
    assert embedder_switch.run_switch(switch.pk) == "active"
    mirrored = FaceImage.objects.enrolled().values_list("embedder", flat=True).first()
    # two faces whose FaceNet template was never kept (as if enrolled while the mirrored one served)
    late = list(FaceImage.objects.enrolled().order_by("pk")[:2])
    from people.models import FaceEmbedding

    FaceEmbedding.objects.filter(face__in=late).exclude(embedder=mirrored).delete()
    embedder_switch.rollback()
    lacking = FaceImage.objects.lacking_served_embedder()
    assert sorted(lacking.values_list("pk", flat=True)) == [f.pk for f in late]
    call_command("reembed_faces", "--limit", "1", "--batch", "1")  # interrupted after one face
    assert lacking.count() == 1 and "1 of 2 faces re-embedded" in capsys.readouterr().out
    call_command("reembed_faces")
    assert lacking.count() == 0 and all(len(bytes(f.embedding)) == 128 * 4 for f in FaceImage.objects.in_gallery())
    assert recognize(user_api, PROBES / "obama1.jpg").json()["faces"][0]["match"]["name"] == "Barack Obama"


@pytest.mark.django_db
def test_a_site_serving_the_mirrored_embedder_sends_edge_devices_no_gallery(kiosk, staff_user):
    """Edge devices make FaceNet's or the fused templates (a fused site's edge gallery and export:
    tests/test_edge_fused.py); the mirrored FaceNet, which no edge export holds, gets a 409 rather
    than templates no device could match."""
    from rest_framework.test import APIClient

    from recognition import embedder_switch
    from security.models import ApiKey

    _, raw = ApiKey.issue(staff_user, "front door edge", role="kiosk", kiosk=kiosk)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    assert api.get("/api/v1/edge/gallery/").status_code == 200
    switch = embedder_switch.start_switch("facenet-mirrored", queue=False)
    assert embedder_switch.run_switch(switch.pk) == "active"
    response = api.get("/api/v1/edge/gallery/")
    assert response.status_code == 409 and response.json()["error"]["code"] == "edge_unavailable"
