"""Every enrolled person has a legal basis (GDPR Art. 9(2)), recorded with who, when and under which
consent notice: through the API, the admin and import_faces; older people show as "not recorded"."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from people.models import LegalBasis, Person

from .conftest import PROBES, read

pytestmark = pytest.mark.django_db

# The photo inline's management form, as the admin page posts it (no photos on these people).
NO_PHOTOS = {"faces-TOTAL_FORMS": "0", "faces-INITIAL_FORMS": "0", "faces-MIN_NUM_FORMS": "0", "faces-MAX_NUM_FORMS": "1000"}


def test_the_api_refuses_to_enroll_without_a_legal_basis(staff_api):
    response = staff_api.post("/api/v1/people/", {"name": "No Basis"}, format="json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid" and "legal_basis" in error["fields"]
    assert not Person.objects.filter(name="No Basis").exists()
    wrong = staff_api.post("/api/v1/people/", {"name": "No Basis", "legal_basis": "because"}, format="json")
    assert wrong.status_code == 400 and "legal_basis" in wrong.json()["error"]["fields"]


def test_the_api_records_who_set_the_basis_when_and_under_which_notice(staff_api, staff_user, settings):
    settings.CONSENT_NOTICE_VERSION = "2026-12-test"
    before = timezone.now()
    response = staff_api.post(
        "/api/v1/people/",
        # Client-sent record fields are ignored: the server fills them.
        {"name": "Grace Hopper", "legal_basis": "employment", "consent_notice_version": "forged"},
        format="json",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["legal_basis"] == "employment"
    assert body["consent_recorded_by"] == "staff" and body["consent_notice_version"] == "2026-12-test"
    person = Person.objects.get(pk=body["id"])
    assert person.consent_recorded_by == staff_user and person.consent_recorded_at >= before

    # A later edit without the field keeps the record; a new basis is recorded afresh.
    assert staff_api.patch(f"/api/v1/people/{person.pk}/", {"notes": "x"}, format="json").status_code == 200
    person.refresh_from_db()
    assert person.legal_basis == "employment" and person.consent_notice_version == "2026-12-test"
    settings.CONSENT_NOTICE_VERSION = "2027-01"
    changed = staff_api.patch(f"/api/v1/people/{person.pk}/", {"legal_basis": "explicit_consent"}, format="json")
    assert changed.json()["legal_basis"] == "explicit_consent" and changed.json()["consent_notice_version"] == "2027-01"


def test_the_admin_add_form_requires_a_legal_basis(client, staff_user):
    client.force_login(staff_user)
    missing = client.post("/admin/people/person/add/", {"name": "Admin Added", "is_active": "on", **NO_PHOTOS})
    assert missing.status_code == 200 and b"This field is required" in missing.content
    assert not Person.objects.filter(name="Admin Added").exists()

    added = client.post(
        "/admin/people/person/add/", {"name": "Admin Added", "is_active": "on", "legal_basis": "vital_interests", **NO_PHOTOS}
    )
    assert added.status_code == 302
    person = Person.objects.get(name="Admin Added")
    assert person.legal_basis == "vital_interests" and person.consent_recorded_by == staff_user
    assert person.consent_recorded_at is not None and person.consent_notice_version


def test_people_enrolled_before_the_field_show_as_not_recorded(client, staff_user):
    legacy = Person.objects.create(name="Legacy Person")  # as the migration leaves existing rows
    assert legacy.legal_basis == "" and legacy.consent_recorded_at is None
    client.force_login(staff_user)
    listing = client.get("/admin/people/person/?q=Legacy")
    assert b"Not recorded" in listing.content
    change = client.get(f"/admin/people/person/{legacy.pk}/change/")
    assert change.status_code == 200 and b"Not recorded" in change.content
    # They can still be edited without one, and given one.
    saved = client.post(f"/admin/people/person/{legacy.pk}/change/", {"name": "Legacy Person", "is_active": "on", **NO_PHOTOS})
    assert saved.status_code == 302
    client.post(
        f"/admin/people/person/{legacy.pk}/change/",
        {"name": "Legacy Person", "is_active": "on", "legal_basis": "explicit_consent", **NO_PHOTOS},
    )
    legacy.refresh_from_db()
    assert legacy.legal_basis == "explicit_consent" and legacy.consent_recorded_by == staff_user


def test_import_faces_requires_a_legal_basis_and_records_it(tmp_path, settings):
    folder = tmp_path / "people" / "imported_person"
    folder.mkdir(parents=True)
    (folder / "1.jpg").write_bytes(read(PROBES / "obama_small.jpg"))
    with pytest.raises(CommandError, match="legal-basis"):
        call_command("import_faces", str(tmp_path / "people"), stdout=io.StringIO())
    with pytest.raises(CommandError):
        call_command("import_faces", str(tmp_path / "people"), legal_basis="because", stdout=io.StringIO())
    assert not Person.objects.filter(name="Imported Person").exists()

    call_command("import_faces", str(tmp_path / "people"), legal_basis="employment", stdout=io.StringIO())
    person = Person.objects.get(name="Imported Person")
    assert person.legal_basis == "employment" and person.consent_recorded_by is None
    assert person.consent_notice_version == settings.CONSENT_NOTICE_VERSION and person.consent_recorded_at
    assert person.faces.count() == 1


def test_the_fixture_gallery_was_imported_with_a_basis():
    assert set(Person.objects.values_list("legal_basis", flat=True)) == {LegalBasis.EXPLICIT_CONSENT}


def test_the_data_export_includes_the_legal_basis(staff_api, staff_user):
    person = Person(name="Exported Person")
    person.record_legal_basis("employment", by=staff_user)
    person.save()
    response = staff_api.get(f"/api/v1/people/{person.pk}/export/")
    assert response.status_code == 200, response.content[:500]
    archive = zipfile.ZipFile(io.BytesIO(response.getvalue()))
    exported = json.loads(archive.read("person.json"))["person"]
    assert exported["legal_basis"] == "employment"
    assert exported["legal_basis_recorded_by"] == "staff"
    assert exported["consent_notice_version"] == person.consent_notice_version
    assert exported["legal_basis_recorded_at"] == person.consent_recorded_at.isoformat()
