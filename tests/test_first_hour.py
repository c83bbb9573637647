"""What a newcomer meets in the first hour: DATABASE_URL in its usual forms, a quiet start, readable
admin pages and a root URL that sends each kind of user to their page."""

from __future__ import annotations

import json
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from . import live
from .conftest import PROBES, read
from .test_production_settings import CLEAN

PRINT_DATABASE = """
import json, django
django.setup()
from django.conf import settings as s
print(json.dumps({k: (str(v) if k == "NAME" else v) for k, v in s.DATABASES["default"].items()}))
"""


def database_for(url: str) -> dict:
    result = subprocess.run(
        [live.PYTHON, "-c", PRINT_DATABASE],
        cwd=live.ROOT,
        env={**CLEAN, "DJANGO_SETTINGS_MODULE": "facesite.settings", "DATABASE_URL": url, "DATABASE_TEST_NAME": "test_x"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


SQLITE_OPTIONS = {
    "timeout": 20,
    "transaction_mode": "IMMEDIATE",
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
}


def test_an_absolute_sqlite_url_gives_sqlite_with_the_embedded_options():
    db = database_for("sqlite:////srv/faces/db.sqlite3")
    assert db["ENGINE"] == "django.db.backends.sqlite3" and db["NAME"] == "/srv/faces/db.sqlite3"
    assert db["OPTIONS"] == SQLITE_OPTIONS


def test_a_relative_sqlite_url_gives_a_path_relative_to_the_working_directory():
    db = database_for("sqlite:///var/other.sqlite3")
    assert db["ENGINE"] == "django.db.backends.sqlite3" and db["NAME"] == "var/other.sqlite3"
    assert db["OPTIONS"] == SQLITE_OPTIONS


@pytest.mark.parametrize("scheme", ["postgres", "postgresql"])
def test_both_postgresql_schemes_keep_the_connection_settings(scheme):
    db = database_for(f"{scheme}://app:pw@db.internal:5433/faces")
    assert db["ENGINE"] == "django.db.backends.postgresql"
    assert (db["NAME"], db["USER"], db["PASSWORD"], db["HOST"], str(db["PORT"])) == ("faces", "app", "pw", "db.internal", "5433")
    assert db["CONN_MAX_AGE"] == 0 and db["CONN_HEALTH_CHECKS"] is True
    assert db["OPTIONS"] == {"connect_timeout": 5} and db["TEST"]["NAME"] == "test_x"


@pytest.mark.slow
@pytest.mark.embedded_only
def test_the_recognition_api_tests_pass_on_a_sqlite_database_url(tmp_path):
    """A run configured by nothing but a sqlite:/// URL (pytest-django then tests on SQLite's
    in-memory database, as with the default settings) passes."""
    env = {
        **CLEAN,
        "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3",
        "DATABASE_TEST_NAME": "",
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    result = subprocess.run(
        [live.PYTHON, "-m", "pytest", "tests/test_recognition_api.py", "-x", "-q", "-p", "no:cacheprovider"],
        cwd=live.ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and " skipped" not in result.stdout.splitlines()[-1]


NOISE = ("cuInit", "PredictCost", "Traceback", "Could not load library", "swigfaiss")


def test_management_commands_load_the_models_without_tensorflow_or_faiss_noise():
    """The same process as `make run`/`import_faces`: Django set up, faiss imported, the detector and
    embedder run on a real photo. A newcomer must not see CUDA, grappler or faiss tracebacks."""
    env = {key: value for key, value in CLEAN.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    code = (
        "import cv2; from recognition import services; "
        f"rgb = cv2.cvtColor(cv2.imread({str(live.ROOT / 'tests/fixtures/faces/probes/obama1.jpg')!r}), cv2.COLOR_BGR2RGB); "
        "print('faces:', len(services.pipeline().analyse(rgb)))"
    )
    result = subprocess.run(
        [live.PYTHON, "manage.py", "shell", "-c", code],
        cwd=live.ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "facesite.settings"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "faces: 1" in result.stdout
    noisy = [line for line in result.stderr.splitlines() if any(word in line for word in NOISE)]
    assert noisy == [], "\n".join(noisy)


# ---- the admin and the root URL ---------------------------------------------------------------------


class FormFields(HTMLParser):
    """The fields a browser would submit from the form with the given id (inputs, selects, textareas)."""

    def __init__(self, form_id: str):
        super().__init__()
        self.form_id, self.inside, self.fields = form_id, False, []
        self._select = self._textarea = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self.inside = a.get("id") == self.form_id
        if not self.inside or "name" not in a and tag in ("input", "select", "textarea"):
            return
        if tag == "input" and a.get("type") not in ("submit", "button", "file", "image"):
            if a.get("type") not in ("checkbox", "radio") or "checked" in a:
                self.fields.append((a["name"], a.get("value", "on" if a.get("type") == "checkbox" else "")))
        elif tag == "select":
            self._select = a["name"]
        elif tag == "option" and self._select and "selected" in a:
            self.fields.append((self._select, a.get("value", "")))
        elif tag == "textarea":
            self._textarea = a["name"]
            self.fields.append((a["name"], ""))

    def handle_data(self, data):
        if self._textarea:
            name, value = self.fields.pop()
            self.fields.append((name, value + data))

    def handle_endtag(self, tag):
        if tag == "form":
            self.inside = False
        elif tag == "select":
            self._select = None
        elif tag == "textarea":
            self._textarea = None


def form_data(html: str, form_id: str) -> dict:
    parser = FormFields(form_id)
    parser.feed(html)
    return dict(parser.fields)


@pytest.fixture
def staff_browser(client, staff_user):
    client.force_login(staff_user)
    return client


@pytest.mark.django_db
def test_the_root_sends_staff_to_the_admin_and_everybody_else_to_the_check_in_page(client, staff_user, plain_user):
    assert client.get("/").url == "/checkin/"
    client.force_login(plain_user)
    assert client.get("/").url == "/checkin/"
    client.force_login(staff_user)
    assert client.get("/").url == "/admin/"


@pytest.mark.django_db
def test_site_and_admin_pages_link_a_favicon(staff_browser):
    for url in ("/checkin/", "/admin/", "/admin/people/person/"):
        html = staff_browser.get(url).content.decode()
        assert '<link rel="icon" href="/static/facesite/favicon.svg"' in html, url
    from django.contrib.staticfiles import finders

    assert "<svg" in Path(finders.find("facesite/favicon.svg")).read_text()


@pytest.mark.django_db
def test_a_photo_held_for_review_is_approved_from_the_person_page(staff_browser, django_capture_on_commit_callbacks):
    """A real mislabel: Barack Obama's photo filed under Joe Biden is held for review, and the person
    page's own button approves it (the reason text tells staff to)."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    from people import services
    from people.models import FaceImage

    from .conftest import person_named

    biden = person_named("Joe Biden")
    upload = SimpleUploadedFile("obama-as-biden.jpg", read(PROBES / "obama1.jpg"), content_type="image/jpeg")
    with django_capture_on_commit_callbacks(execute=True):  # processed here (django-q runs synchronously)
        face = services.enroll(biden, upload)
    face.refresh_from_db()
    assert face.status == FaceImage.Status.REVIEW and "approve it" in face.reason

    url = f"/admin/people/person/{biden.pk}/change/"
    html = staff_browser.get(url).content.decode()
    assert f'name="_approve_face" value="{face.pk}"' in html
    data = form_data(html, "person_form") | {"_approve_face": str(face.pk)}
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_browser.post(url, data, follow=True)
    assert response.status_code == 200
    face.refresh_from_db()
    assert face.status == FaceImage.Status.ACCEPTED, response.content.decode()[-3000:]
    assert "approved" in response.content.decode()
    assert 'name="_approve_face"' not in response.content.decode()


@pytest.mark.django_db
def test_list_pages_round_scores_and_shorten_long_reasons(staff_browser):
    from checkin.models import CheckIn
    from people.models import FaceImage, Person
    from security.models import AuditEvent

    person = Person.objects.create(name="Reason Tester")
    reason = " ".join(["Looks more like Angelina Jolie (similarity 0.83) than Reason Tester (no other photos)."] * 4)
    FaceImage.objects.create(
        person=person,
        image="x.jpg",
        status=FaceImage.Status.REVIEW,
        reason=reason,
        detection_score=0.9994812,
        sharpness=123.456789,
    )
    AuditEvent.objects.create(
        action="recognize",
        actor="staff",
        status_code=200,
        result={"faces": 2, "matches": [{"person_id": person.pk, "similarity": 0.8274142742156982}], "threshold": 0.55},
        duration_ms=1234,
    )

    faces = staff_browser.get("/admin/people/faceimage/?q=Reason").content.decode()
    assert f'title="{reason}"' in faces and f">{reason}<" not in faces
    assert "0.999" in faces and "0.9994812" not in faces and "123.5" in faces
    shown = re.search(r'<span title="Looks more like[^"]*">([^<]*)…</span>', faces)
    assert shown and len(shown.group(1)) < 60, shown
    assert 'id="nav-sidebar"' not in faces  # a quarter of a 1280 px screen, beside every list

    from django.contrib import admin

    checkins = admin.site._registry[CheckIn]
    assert "similarity_label" in checkins.list_display and "similarity" not in checkins.list_display
    assert checkins.similarity_label(CheckIn(person=person, similarity=0.8274142742156982, threshold=0.55, frames=4)) == "0.827"

    audit = staff_browser.get("/admin/security/auditevent/").content.decode()
    assert f"2 faces; matched person {person.pk} (0.827); threshold 0.550" in audit
    assert "1,234 ms" in audit and "{&#x27;faces&#x27;" not in audit


@pytest.mark.django_db
def test_a_model_version_says_when_its_threshold_fell_back_and_on_how_many_faces_it_was_measured(staff_browser):
    from training.models import ModelVersion

    note = (
        "nearest_neighbour: only 5 impostor searches (FAR 1.0% needs 100): the calibrated threshold 0.312 is not "
        "trusted; FACE_MATCH_THRESHOLD 0.550 is used."
    )
    version = ModelVersion.objects.create(
        number=9001,
        status=ModelVersion.Status.READY,
        recognizer=ModelVersion.Recognizer.NEAREST_NEIGHBOUR,
        threshold=0.55,
        metrics={
            "top1_accuracy": 1.0,
            "far": 0.0,
            "frr": 0.0,
            "threshold": 0.55,
            "target_far": 0.01,
            "identification_rate": 1.0,
            "n_known_probes": 5,
            "n_genuine": 5,
            "n_impostor": 5,
            "threshold_note": note,
        },
        timings={"gathering": 0.25, "exporting": 93.5},
        force_activate=False,
    )
    html = staff_browser.get(f"/admin/training/modelversion/{version.pk}/change/").content.decode()
    assert "not calibrated: the FACE_MATCH_THRESHOLD setting is used" in html
    assert "100.0% of 5 held-out faces" in html and "0.0% of 5 impostor searches" in html
    assert "No: activated only if it scores at least as well" in html
    assert "93.8 s" in html  # the timings' total, not raw JSON
    listing = staff_browser.get("/admin/training/modelversion/").content.decode()
    assert "(n=5)" in listing


@pytest.mark.django_db
def test_a_running_version_shows_what_its_stage_is_doing(staff_browser):
    """The first export sits at 80% for minutes: the list shows the run's latest line, which says why."""
    from training.models import ModelVersion

    ModelVersion.objects.create(
        number=9002,
        status=ModelVersion.Status.TRAINING,
        stage="exporting",
        progress=80,
        log="18:01:02 Fitting lbph.\n18:01:09 Exporting the edge model (TFLite embedder and label map). The first "
        "time this is a one-time conversion of a few minutes; later runs reuse it.",
    )
    html = staff_browser.get("/admin/training/modelversion/").content.decode()
    assert "80%" in html and "The first time this is a one-time conversion of a few minutes" in html
    assert "Fitting lbph" not in html


def test_the_api_schema_documents_every_view_without_a_warning(tmp_path):
    """The offline docs (/api/v1/docs/) are only as good as the schema: no view left out."""
    from django.core.management import call_command

    call_command("spectacular", "--fail-on-warn", "--file", str(tmp_path / "schema.yml"))
    schema = (tmp_path / "schema.yml").read_text()
    assert "/api/v1/edge/gallery/" in schema and "/api/v1/reports/attendance/" in schema
