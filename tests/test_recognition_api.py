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


def test_the_verify_pages_comparison_is_audited_without_its_result(client, plain_user):
    from people.models import Person
    from security.models import AuditEvent

    client.force_login(plain_user)  # as the /verify/ page calls it: the session
    files = {"image1": PEOPLE / "barack_obama/obama.jpg", "image2": PEOPLE / "barack_obama/obama2.jpg"}
    response = client.post("/api/v1/verify/", {k: SimpleUploadedFile(v.name, read(v)) for k, v in files.items()})
    assert response.status_code == 200 and response.json()["verified"] is True
    event = AuditEvent.objects.get(action="verify")
    assert (event.user, event.status_code, event.person_ids, event.result) == (plain_user, 200, "", {})
    # checked against a person, the outcome is a decision about them: kept, and logged against them
    obama = Person.objects.get(name="Barack Obama")
    client.post("/api/v1/verify/", {"image": SimpleUploadedFile("p.jpg", read(PROBES / "obama1.jpg")), "person_id": obama.pk})
    about = AuditEvent.objects.about(obama.pk).get()
    assert about.result["verified"] is True and about.result["person_id"] == obama.pk


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


def test_verify_names_a_person_to_a_plain_account_only_when_the_face_is_verified(user_api, staff_api):
    from people.models import Person

    obama = Person.objects.get(name="Barack Obama")
    biden = Person.objects.get(name="Joe Biden")
    match = verify(user_api, image=PROBES / "obama1.jpg", person_id=obama.pk).json()
    assert match["verified"] is True and match["name"] == "Barack Obama"
    other = verify(user_api, image=PROBES / "obama1.jpg", person_id=biden.pk).json()
    assert other["verified"] is False and other["person_id"] == biden.pk
    assert other["name"] is None and other["compared_images"] is None  # nothing about who Biden is
    # staff (who may read the roster) are told whom they compared with
    told = verify(staff_api, image=PROBES / "obama1.jpg", person_id=biden.pk).json()
    assert told["verified"] is False and told["name"] == "Joe Biden" and told["compared_images"] >= 1


def _sky_jpeg() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (320, 240), (120, 160, 200)).save(buf, format="JPEG")
    return buf.getvalue()


def test_verify_refuses_unknown_deactivated_and_unenrolled_ids_alike_to_a_plain_account(user_api):
    """A /checkin/ account may not read the roster: counting person_id = 1, 2, ... must not list it."""
    from people.models import FaceImage, Person

    deactivated = Person.objects.filter(faces__status=FaceImage.Status.ACCEPTED).exclude(name="Barack Obama").first()
    Person.objects.filter(pk=deactivated.pk).update(is_active=False)
    unenrolled = Person.objects.create(name="Nobody Photographed", legal_basis="explicit_consent")
    unknown = Person.objects.order_by("-pk").first().pk + 1000
    for person_id in (unknown, deactivated.pk, unenrolled.pk):
        response = verify(user_api, image=PROBES / "obama1.jpg", person_id=person_id)
        assert response.status_code == 404, response.content
        error = response.json()["error"]
        assert error["code"] == "unknown_person"
        assert error["message"] == f"No enrolled person with id {person_id}."
        assert deactivated.name not in response.content.decode() and unenrolled.name not in response.content.decode()
        # without a face, every id gets the same answer too: no id is told apart before comparing
        faceless = user_api.post(
            "/api/v1/verify/", {"image": SimpleUploadedFile("sky.jpg", _sky_jpeg()), "person_id": person_id}, format="multipart"
        )
        assert faceless.status_code == 422 and faceless.json()["error"]["code"] == "no_face"


def test_an_account_that_reads_people_is_told_that_an_active_person_has_no_face_yet(django_user_model):
    from django.contrib.auth.models import Permission

    from people.models import FaceImage, Person

    from .conftest import token_client

    auditor = django_user_model.objects.create_user("auditor", password="auditor-pass-123")
    auditor.user_permissions.add(Permission.objects.get(codename="view_person"))
    api = token_client(auditor)
    unenrolled = Person.objects.create(name="Nobody Photographed", legal_basis="explicit_consent")
    response = verify(api, image=PROBES / "obama1.jpg", person_id=unenrolled.pk)
    assert response.status_code == 422 and response.json()["error"]["code"] == "person_not_enrolled"
    assert "Nobody Photographed" in response.json()["error"]["message"]
    # a deactivated person is out of the gallery: nobody verifies against them
    deactivated = Person.objects.filter(faces__status=FaceImage.Status.ACCEPTED).first()
    Person.objects.filter(pk=deactivated.pk).update(is_active=False)
    response = verify(api, image=PROBES / "obama1.jpg", person_id=deactivated.pk)
    assert response.status_code == 404 and response.json()["error"]["code"] == "unknown_person"


def test_verify_needs_two_images_or_an_image_and_a_person(user_api):
    response = verify(user_api, image1=PROBES / "obama1.jpg")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"


def test_openapi_schema_and_docs_are_served(user_api, client):
    schema = user_api.get("/api/v1/schema/")
    assert schema.status_code == 200
    assert b"/api/v1/recognize/" in schema.content and b"/api/v1/verify/" in schema.content
    assert user_api.get("/api/v1/docs/").status_code == 200
