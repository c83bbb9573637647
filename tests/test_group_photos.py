"""Faces picked from group photos: a photo of several faces lists them (numbered left to right);
the upload API takes a face_index or box, staff choose a face in the admin, and the importer takes
a portrait's clear central subject and says so. Real photos, the real detector and embedder."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.utils.html import escape
from PIL import Image

from people.models import FaceChoice, FaceImage, GalleryChange, Person
from recognition import enrollment
from recognition.engine import selection
from recognition.engine.detection import DetectedFace
from recognition.pipelines import pipeline

from .conftest import PEOPLE, PROBES, person_named, read

pytestmark = pytest.mark.django_db

KIT_WITH_ROSE = PROBES / "kit_with_rose.jpg"  # Rose Leslie on the left (#0), Kit Harington on the right (#1)
ROSE, KIT = 0, 1


def post_photo(api, person, data: bytes, capture, **fields):
    with capture(execute=True):
        return api.post(
            f"/api/v1/people/{person.pk}/faces/", {"image": SimpleUploadedFile("group.jpg", data), **fields}, format="multipart"
        )


def mean_similarity(face: FaceImage, person: Person) -> float:
    """The face's embedding against the person's other accepted photos (cosine, mean)."""
    others = FaceImage.objects.accepted().filter(person=person).exclude(pk=face.pk)
    return float(np.mean([face.vector @ other.vector for other in others]))


def test_faces_are_numbered_left_to_right_and_a_box_finds_its_face():
    faces = [DetectedFace((300, 10, 50, 50), np.zeros((5, 2)), 1.0), DetectedFace((10, 40, 80, 80), np.zeros((5, 2)), 1.0)]
    ordered = selection.reading_order(faces)
    assert [f.box[0] for f in ordered] == [10, 300]
    assert selection.best_overlap(ordered, (290, 0, 70, 70))[0] == 1
    assert selection.best_overlap(ordered, (500, 500, 10, 10)) is None


def test_the_central_subject_is_the_largest_face_alone_near_the_centre():
    def face(x, y, side):
        return DetectedFace((x, y, side, side), np.zeros((5, 2)), 1.0)

    rule, shape = selection.CentralRule(), (250, 250, 3)
    subject = selection.central_subject([face(80, 80, 90), face(0, 0, 70)], shape, rule)
    assert subject is not None and subject.face.box[0] == 80 and subject.ratio > 1.6 and subject.offset < 0.01
    assert selection.central_subject([face(0, 0, 90), face(160, 160, 70)], shape, rule) is None  # off-centre
    assert selection.central_subject([face(80, 80, 90), face(0, 0, 85)], shape, rule) is None  # not clearly larger
    # Another face near the centre too (the first hold-out run took the wrong man so): no clear subject.
    assert selection.central_subject([face(60, 80, 90), face(110, 85, 80)], shape, rule) is None


def test_a_group_photo_is_rejected_as_several_faces_with_the_faces_listed(staff_api, django_capture_on_commit_callbacks):
    kit = person_named("Kit Harington")
    response = post_photo(staff_api, kit, read(KIT_WITH_ROSE), django_capture_on_commit_callbacks)
    assert response.status_code == 201
    face = FaceImage.objects.get(pk=response.json()["id"])
    body = staff_api.get(f"/api/v1/people/{kit.pk}/faces/{face.pk}/").json()
    assert body["status"] == "rejected" and body["reason_code"] == "several_faces"
    assert [f["index"] for f in body["faces"]] == [0, 1]
    boxes = [f["box"] for f in body["faces"]]
    assert boxes[0][0] < boxes[1][0] and all(len(b) == 4 for b in boxes)  # left to right
    assert "#0 " in body["reason"] and "#1 " in body["reason"] and "numbered left to right" in body["reason"]


def test_face_index_enrolls_the_chosen_person_from_a_group_photo(staff_api, django_capture_on_commit_callbacks):
    kit, rose = person_named("Kit Harington"), person_named("Rose Leslie")
    response = post_photo(staff_api, kit, read(KIT_WITH_ROSE), django_capture_on_commit_callbacks, face_index=KIT)
    assert response.status_code == 201, response.content
    face = FaceImage.objects.get(pk=response.json()["id"])
    assert face.status == FaceImage.Status.ACCEPTED, face.reason
    assert face.face_choice == FaceChoice.STAFF and face.chosen_box == face.box
    # The embedding is Kit's: close to his other photos, far from Rose's.
    assert mean_similarity(face, kit) > 0.6 > 0.2 > mean_similarity(face, rose)

    # The same photo by box, for Rose: her face is taken.
    rose_box = FaceImage.objects.get(pk=face.pk).faces_found[ROSE]
    shifted = ",".join(str(v) for v in (rose_box[0] + 5, rose_box[1] - 5, rose_box[2], rose_box[3]))
    response = post_photo(staff_api, rose, read(KIT_WITH_ROSE), django_capture_on_commit_callbacks, box=shifted)
    assert response.status_code == 201, response.content
    theirs = FaceImage.objects.get(pk=response.json()["id"])
    assert theirs.status == FaceImage.Status.ACCEPTED and theirs.box == rose_box
    assert mean_similarity(theirs, rose) > 0.6 > 0.2 > mean_similarity(theirs, kit)


def test_choosing_the_wrong_face_is_caught_by_the_mislabel_check(staff_api, django_capture_on_commit_callbacks):
    kit = person_named("Kit Harington")
    response = post_photo(staff_api, kit, read(KIT_WITH_ROSE), django_capture_on_commit_callbacks, face_index=ROSE)
    face = FaceImage.objects.get(pk=response.json()["id"])
    assert face.status == FaceImage.Status.REVIEW and face.reason_code == "possible_mislabel"
    assert "Rose Leslie" in face.reason


@pytest.mark.parametrize(
    "fields, code",
    [
        ({"face_index": 2}, "face_index_out_of_range"),
        ({"face_index": 99}, "face_index_out_of_range"),
        ({"face_index": -1}, "invalid"),
        ({"face_index": "first"}, "invalid"),
        ({"box": "1,2,3"}, "invalid"),
        ({"box": "[1, 2, 3, 4, 5]"}, "invalid"),
        ({"box": "a,b,c,d"}, "invalid"),
        ({"box": "10,10,-5,20"}, "invalid"),
        ({"box": "nan,1,2,3"}, "invalid"),
        ({"box": "[[[[1]]]]"}, "invalid"),
        ({"box": "0,0,20,20"}, "no_face_at_box"),
        ({"box": "5000,5000,100,100"}, "no_face_at_box"),
        ({"face_index": 1, "box": "258,79,89,120"}, "face_choice_conflict"),
    ],
)
def test_a_bad_face_choice_is_refused_and_nothing_is_stored(staff_api, django_capture_on_commit_callbacks, fields, code):
    kit = person_named("Kit Harington")
    before = FaceImage.objects.count()
    response = post_photo(staff_api, kit, read(KIT_WITH_ROSE), django_capture_on_commit_callbacks, **fields)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    if code == "face_index_out_of_range":
        assert "2 face(s)" in error["message"] and "#1 [" in error["message"]
    assert FaceImage.objects.count() == before


def test_a_face_index_on_a_photo_without_faces_is_refused(staff_api, django_capture_on_commit_callbacks):
    buf = io.BytesIO()
    Image.new("RGB", (320, 240), (90, 140, 60)).save(buf, format="JPEG")
    response = post_photo(
        staff_api, person_named("Kit Harington"), buf.getvalue(), django_capture_on_commit_callbacks, face_index=0
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "no_face"


def test_only_staff_may_upload_with_a_face_choice(user_api, django_capture_on_commit_callbacks):
    response = post_photo(
        user_api, person_named("Kit Harington"), read(KIT_WITH_ROSE), django_capture_on_commit_callbacks, face_index=1
    )
    assert response.status_code == 403


# ---- the admin: choose a face ------------------------------------------------------------------------


@pytest.fixture
def admin_client(client, staff_user):
    client.force_login(staff_user)
    return client


def rejected_group_photo(person, capture) -> FaceImage:
    from people import services

    with capture(execute=True):
        face = services.enroll(person, SimpleUploadedFile("group.jpg", read(KIT_WITH_ROSE)))
    face.refresh_from_db()
    assert face.reason_code == "several_faces"
    return face


def test_staff_choose_the_face_in_the_admin_and_the_photo_is_processed_with_it(admin_client, django_capture_on_commit_callbacks):
    kit = person_named("Kit Harington")
    face = rejected_group_photo(kit, django_capture_on_commit_callbacks)
    # The person's page and the photo's page lead to the chooser.
    url = f"/admin/people/faceimage/{face.pk}/choose-face/"
    assert url in admin_client.get(f"/admin/people/person/{kit.pk}/change/").content.decode()
    assert url in admin_client.get(f"/admin/people/faceimage/{face.pk}/change/").content.decode()

    page = admin_client.get(url)
    assert page.status_code == 200
    html = page.content.decode()
    photo_url = f"/api/v1/people/{kit.pk}/faces/{face.pk}/image/"
    assert f'src="{photo_url}"' in html  # through the staff-only media view
    assert html.count("<rect ") == 2 and ">#0</text>" in html and ">#1</text>" in html
    assert 'viewBox="0 0 501 700"' in html  # the boxes are drawn in the photo's own pixels
    assert admin_client.get(photo_url).status_code == 200

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(url, {"face_index": str(KIT)})
    assert response.status_code == 302
    face.refresh_from_db()
    assert face.status == FaceImage.Status.ACCEPTED, face.reason
    assert face.face_choice == FaceChoice.STAFF and face.chosen_box == face.faces_found[KIT] == face.box
    assert mean_similarity(face, kit) > 0.6

    # Re-processing keeps the choice: the same face, the same embedding.
    vector = face.vector.copy()
    enrollment.process_face_image(FaceImage.objects.get(pk=face.pk))
    again = FaceImage.objects.get(pk=face.pk)
    assert again.status == FaceImage.Status.ACCEPTED and again.box == face.box
    assert float(again.vector @ vector) > 0.999


def test_choosing_a_face_that_is_not_listed_changes_nothing(admin_client, django_capture_on_commit_callbacks):
    face = rejected_group_photo(person_named("Kit Harington"), django_capture_on_commit_callbacks)
    url = f"/admin/people/faceimage/{face.pk}/choose-face/"
    for bad in ("7", "-1", "x", ""):
        response = admin_client.post(url, {"face_index": bad}, follow=True)
        assert response.status_code == 200
        assert "Not chosen" in response.content.decode()
    face.refresh_from_db()
    assert face.reason_code == "several_faces" and face.chosen_box is None
    # A photo with one face has nothing to choose from.
    single = FaceImage.objects.accepted().filter(person__name="Joe Biden", faces_found__isnull=True).first()
    assert admin_client.get(f"/admin/people/faceimage/{single.pk}/choose-face/").status_code == 404


def test_only_staff_reach_the_face_chooser(client, plain_user, django_capture_on_commit_callbacks):
    face = rejected_group_photo(person_named("Kit Harington"), django_capture_on_commit_callbacks)
    url = f"/admin/people/faceimage/{face.pk}/choose-face/"
    response = client.get(url)
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    client.force_login(plain_user)
    assert client.post(url, {"face_index": "1"}).status_code == 302  # to the admin's sign-in: not staff
    face.refresh_from_db()
    assert face.chosen_box is None
    assert client.get(f"/api/v1/people/{face.person_id}/faces/{face.pk}/image/").status_code == 403


# ---- the importer: a portrait's central subject --------------------------------------------------------


def face_tile(path, side: int) -> Image.Image:
    """The largest face of a real photo, cropped square with some margin and scaled so the face box
    is about ``side`` px wide."""
    image = Image.open(path).convert("RGB")
    x, y, w, h = pipeline().detect(np.asarray(image))[0].box
    cx, cy, half = x + w / 2, y + h / 2, max(w, h) * 0.9
    crop = image.crop((int(cx - half), int(cy - half), int(cx + half), int(cy + half)))
    return crop.resize((int(side * 1.8), int(side * 1.8)))


def composite(*faces: tuple, size: int = 640) -> bytes:
    """A ``size``-px square JPEG with real faces pasted on a plain background: each of ``faces`` is
    (photo, face side in px, (x, y) of the face's centre), pasted in order."""
    canvas = Image.new("RGB", (size, size), (200, 200, 195))
    for path, side, (x, y) in faces:
        tile = face_tile(path, side)
        canvas.paste(tile, (x - tile.width // 2, y - tile.height // 2))
    buf = io.BytesIO()
    canvas.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def portrait(subject, background, subject_at: tuple[int, int]) -> bytes:
    """A 640x640 portrait: ``subject``'s face (~150 px) centred at ``subject_at``, and a
    background face (~110 px: area ratio ~1.9, well under the dominant-face rule's 4) near a corner."""
    small = int(110 * 1.8)
    return composite((background, 110, (640 - 5 - small // 2, 5 + small // 2)), (subject, 150, subject_at))


def test_the_importer_takes_a_portraits_central_subject_and_says_so(tmp_path):
    folder = tmp_path / "people" / "barack_obama"
    folder.mkdir(parents=True)
    (folder / "central.jpg").write_bytes(portrait(PEOPLE / "barack_obama/obama2.jpg", PEOPLE / "joe_biden/biden.jpg", (320, 340)))
    (folder / "off_centre.jpg").write_bytes(
        portrait(PEOPLE / "barack_obama/obama2.jpg", PEOPLE / "joe_biden/biden.jpg", (150, 470))
    )

    before = io.StringIO()
    args = (str(tmp_path / "people"),)
    call_command("import_faces", *args, legal_basis="explicit_consent", no_central_subject=True, stdout=before)
    assert "several_faces x2" in before.getvalue() and "central subject" not in before.getvalue()

    out = io.StringIO()
    call_command("import_faces", *args, legal_basis="explicit_consent", stdout=out)
    text = out.getvalue()
    assert "1 accepted, 1 rejected" in text and "several_faces x1" in text
    assert "Central subject taken in 1 photos of several faces:" in text
    line = next(line for line in text.splitlines() if "central.jpg" in line and "took the central subject" in line)
    assert re.search(
        r"2 faces; took the central subject, face #0 \[\d+, \d+, \d+, \d+\]: \d\.\dx the next face's area, 0\.\d\d from the centre -> accepted",
        line,
    ), line

    obama = person_named("Barack Obama")
    taken = obama.faces.get(original_name="central.jpg", face_choice=FaceChoice.CENTRAL)
    assert taken.status == FaceImage.Status.ACCEPTED and taken.chosen_box == taken.box
    assert mean_similarity(taken, obama) > 0.6  # Obama's face, not Biden's
    assert {f.reason_code for f in obama.faces.filter(original_name="off_centre.jpg")} == {"several_faces"}


# ---- every enrollment path: a portrait's central subject (FACE_ENROLL_CENTRAL_SUBJECT, on by default) ------------

CENTRAL_REASON = re.compile(
    r"2 faces; took the central subject, face #(\d) \[\d+, \d+, \d+, \d+\]: \d+\.\dx the next face's area, 0\.\d\d from the centre"
)


def obama_portrait() -> bytes:
    """Obama (a photo the gallery does not hold) at the centre, Biden smaller in the background."""
    return portrait(PROBES / "obama1.jpg", PEOPLE / "joe_biden/biden.jpg", (320, 340))


def test_an_uploaded_portrait_is_enrolled_on_its_central_subject_and_the_answer_says_so(
    staff_api, admin_client, django_capture_on_commit_callbacks
):
    obama, biden = person_named("Barack Obama"), person_named("Joe Biden")
    response = post_photo(staff_api, obama, obama_portrait(), django_capture_on_commit_callbacks)
    assert response.status_code == 201, response.content
    body = staff_api.get(f"/api/v1/people/{obama.pk}/faces/{response.json()['id']}/").json()
    assert body["status"] == "accepted" and body["reason_code"] == "" and body["face_choice"] == "central"
    reason = CENTRAL_REASON.fullmatch(body["face_choice_reason"])
    assert reason, body["face_choice_reason"]
    assert body["chosen_box"] == body["box"] == body["faces"][int(reason[1])]["box"]
    face = FaceImage.objects.get(pk=body["id"])
    assert mean_similarity(face, obama) > 0.6 > 0.3 > mean_similarity(face, biden)  # Obama's face, not Biden's
    # The person's page in the admin says it too, where a rejected photo's reason would be.
    said = escape(f"Face taken: {body['face_choice_reason']}.")
    assert said in admin_client.get(f"/admin/people/person/{obama.pk}/change/").content.decode()


@pytest.mark.parametrize(
    "faces",
    [
        # two faces of similar size side by side (1.1x in area), both near the centre
        ((PROBES / "obama1.jpg", 150, (250, 330)), (PEOPLE / "joe_biden/biden.jpg", 143, (400, 330))),
        # the face at the centre is the smaller one: the larger (off-centre) may be the person's
        ((PEOPLE / "joe_biden/biden.jpg", 170, (130, 140)), (PROBES / "obama1.jpg", 120, (320, 330))),
    ],
    ids=["similar-sizes-side-by-side", "smaller-face-in-the-centre"],
)
def test_a_photo_without_a_clear_subject_is_still_several_faces(staff_api, django_capture_on_commit_callbacks, faces):
    obama = person_named("Barack Obama")
    response = post_photo(staff_api, obama, composite(*faces), django_capture_on_commit_callbacks)
    body = staff_api.get(f"/api/v1/people/{obama.pk}/faces/{response.json()['id']}/").json()
    assert body["status"] == "rejected" and body["reason_code"] == "several_faces", body
    assert len(body["faces"]) == 2 and body["face_choice"] == "" and body["face_choice_reason"] == ""
    assert body["chosen_box"] is None and body["box"] is None


def test_with_the_setting_off_a_portrait_is_several_faces_and_the_rules_pick_is_not_kept(
    staff_api, settings, django_capture_on_commit_callbacks
):
    obama = person_named("Barack Obama")
    settings.FACE_ENROLL_CENTRAL_SUBJECT = False
    response = post_photo(staff_api, obama, obama_portrait(), django_capture_on_commit_callbacks)
    face = FaceImage.objects.get(pk=response.json()["id"])
    assert face.reason_code == "several_faces" and len(face.faces_found) == 2 and face.chosen_box is None

    settings.FACE_ENROLL_CENTRAL_SUBJECT = True  # re-processed with the rule on: the subject is taken
    enrollment.process_face_image(face)
    face = FaceImage.objects.get(pk=face.pk)
    assert face.status == FaceImage.Status.ACCEPTED and face.face_choice == FaceChoice.CENTRAL

    settings.FACE_ENROLL_CENTRAL_SUBJECT = False  # the rule's earlier pick is not a choice that sticks
    enrollment.process_face_image(face)
    face = FaceImage.objects.get(pk=face.pk)
    assert face.reason_code == "several_faces" and face.chosen_box is None and face.face_choice == ""
    assert face.embedding is None and face.face_choice_reason == ""


def test_an_admin_upload_takes_the_central_subject_and_the_admin_says_which_face_and_why(
    admin_client, django_capture_on_commit_callbacks
):
    person = Person.objects.create(name="Obama In The Admin")
    data = {
        "name": person.name,
        "external_id": "",
        "notes": "",
        "is_active": "on",
        "new_photos": [SimpleUploadedFile("portrait.jpg", obama_portrait(), content_type="image/jpeg")],
        "faces-TOTAL_FORMS": "0",
        "faces-INITIAL_FORMS": "0",
        "faces-MIN_NUM_FORMS": "0",
        "faces-MAX_NUM_FORMS": "1000",
        "_continue": "1",
    }
    with django_capture_on_commit_callbacks(execute=True):
        assert admin_client.post(f"/admin/people/person/{person.pk}/change/", data).status_code == 302
    face = person.faces.get()
    assert face.face_choice == FaceChoice.CENTRAL and CENTRAL_REASON.fullmatch(face.face_choice_reason)
    # Then held for review: the face taken is Barack Obama's, who is enrolled under his own name.
    assert face.status == FaceImage.Status.REVIEW and "Barack Obama" in face.reason
    said = escape(f"Face taken: {face.face_choice_reason}.")
    assert said in admin_client.get(f"/admin/people/faceimage/{face.pk}/change/").content.decode()


def test_a_central_subject_unlike_the_persons_other_photos_is_held_for_review(staff_api, django_capture_on_commit_callbacks):
    # Biden stands in the middle of a photo filed under Obama. Biden is out of the gallery here (not
    # active), so no mislabel check names him: the rule's pick is checked against Obama's own photos.
    biden = person_named("Joe Biden")
    Person.objects.filter(pk=biden.pk).update(is_active=False)
    GalleryChange.objects.record(GalleryChange.Kind.PERSON, [biden.pk])
    obama = person_named("Barack Obama")
    data = portrait(PEOPLE / "joe_biden/biden2.jpg", PROBES / "obama1.jpg", (320, 330))
    response = post_photo(staff_api, obama, data, django_capture_on_commit_callbacks)
    face = FaceImage.objects.get(pk=response.json()["id"])
    assert face.face_choice == FaceChoice.CENTRAL
    assert face.status == FaceImage.Status.REVIEW and face.reason_code == "central_subject_unconfirmed", face.reason
    assert face.face_choice_reason in face.reason and "Barack Obama's other photos" in face.reason
    assert not FaceImage.objects.in_gallery().filter(pk=face.pk).exists()
