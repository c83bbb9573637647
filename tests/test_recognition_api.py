"""Recognition and verification through the API, the real pipeline, and the enrolled fixtures."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from .conftest import PEOPLE, PROBES, read

pytestmark = pytest.mark.django_db


def recognize(api, path, **extra):
    return api.post("/api/v1/recognize/", {"image": SimpleUploadedFile(path.name, read(path)), **extra}, format="multipart")


def names_in(response):
    return sorted(face["match"]["name"] for face in response.json()["faces"] if face["match"])


@pytest.mark.parametrize(
    "probe, expected",
    [
        ("obama1.jpg", ["Barack Obama"]),
        ("obama_and_biden.jpg", ["Barack Obama", "Joe Biden"]),
        ("two_people.jpg", ["Barack Obama", "Joe Biden"]),
        ("kit_with_rose.jpg", ["Kit Harington", "Rose Leslie"]),
        ("johnsnow_test1.jpg", ["Kit Harington"]),
        ("alex_lacamoire1.jpg", ["Alex Lacamoire"]),
        ("32bit.png", ["Barack Obama"]),
    ],
)
def test_enrolled_people_are_named(user_api, probe, expected):
    response = recognize(user_api, PROBES / probe)
    assert response.status_code == 200, response.content
    assert names_in(response) == expected
    # Anyone else in the picture (a child at the edge of obama_and_biden.jpg) is reported as unknown.
    assert len(response.json()["faces"]) >= len(expected)


def test_strangers_are_reported_as_unknown(user_api):
    response = recognize(user_api, PROBES / "multiface.jpg")
    assert response.status_code == 200
    faces = response.json()["faces"]
    assert len(faces) == 6
    assert all(face["match"] is None for face in faces)
    assert all(face["candidates"] == [] for face in faces)  # near misses name nobody (staff: candidates=all)


def test_recognition_answer_has_boxes_landmarks_candidates_and_margin(staff_api):
    body = recognize(staff_api, PROBES / "obama1.jpg", top_k=3, candidates="all").json()
    face = body["faces"][0]
    x, y, w, h = face["box"]
    assert 500 < x < 600 and 100 < y < 180 and w > 250 and h > 400  # original pixels of an 1480x832 photo
    assert set(face["landmarks"]) == {"left_eye", "right_eye", "nose", "mouth_left", "mouth_right"}
    assert face["detection_score"] > 0.9
    assert len(face["candidates"]) == 3
    assert face["candidates"][0] == face["match"]
    assert face["margin"] == pytest.approx(face["candidates"][0]["similarity"] - face["candidates"][1]["similarity"], abs=1e-3)
    assert body["threshold"] > 0 and body["gallery_size"] >= 15 and "model_version" in body


def test_a_strict_threshold_makes_a_match_unknown(user_api):
    body = recognize(user_api, PROBES / "obama1.jpg", threshold=0.99).json()
    assert body["faces"][0]["match"] is None


def test_image_without_a_face_is_a_clear_4xx(user_api):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (320, 240), (120, 160, 200)).save(buf, format="JPEG")
    response = user_api.post("/api/v1/recognize/", {"image": SimpleUploadedFile("sky.jpg", buf.getvalue())}, format="multipart")
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "no_face"


def verify(api, **files):
    data = {k: SimpleUploadedFile(v.name, read(v)) if hasattr(v, "name") else v for k, v in files.items()}
    return api.post("/api/v1/verify/", data, format="multipart")


def test_two_photos_of_obama_are_verified(user_api):
    body = verify(user_api, image1=PEOPLE / "barack_obama/obama.jpg", image2=PEOPLE / "barack_obama/obama2.jpg").json()
    assert body["verified"] is True
    assert body["similarity"] >= body["threshold"]
    assert [f["field"] for f in body["faces"]] == ["image1", "image2"]
    assert all(len(f["box"]) == 4 for f in body["faces"])


def test_obama_and_biden_are_not_the_same_person(user_api):
    body = verify(user_api, image1=PEOPLE / "barack_obama/obama.jpg", image2=PEOPLE / "joe_biden/biden.jpg").json()
    assert body["verified"] is False
    assert body["similarity"] < body["threshold"]


def test_a_photo_is_verified_against_an_enrolled_person(user_api):
    from people.models import Person

    obama = Person.objects.get(name="Barack Obama")
    biden = Person.objects.get(name="Joe Biden")
    assert verify(user_api, image=PROBES / "obama1.jpg", person_id=obama.pk).json()["verified"] is True
    assert verify(user_api, image=PROBES / "obama1.jpg", person_id=biden.pk).json()["verified"] is False


def test_verify_against_an_unknown_person_is_404(user_api):
    response = verify(user_api, image=PROBES / "obama1.jpg", person_id=999999)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_person"


def test_verify_needs_two_images_or_an_image_and_a_person(user_api):
    response = verify(user_api, image1=PROBES / "obama1.jpg")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"


def test_openapi_schema_and_docs_are_served(user_api, client):
    schema = user_api.get("/api/v1/schema/")
    assert schema.status_code == 200
    assert b"/api/v1/recognize/" in schema.content and b"/api/v1/verify/" in schema.content
    assert user_api.get("/api/v1/docs/").status_code == 200
