"""Face photos, crops and model files are never public: staff only, through views that look up a row."""

from __future__ import annotations

import importlib
import re

import pytest
from django.core.files.base import ContentFile
from django.test import override_settings
from django.urls import URLPattern, URLResolver, clear_url_caches, get_resolver
from django.views.static import serve
from rest_framework.test import APIClient

from people.models import FaceImage
from security.models import ApiKey, Role

from .conftest import token_client

pytestmark = pytest.mark.django_db

PNG = b"\x89PNG\r\n\x1a\n"


def accepted_face() -> FaceImage:
    face = FaceImage.objects.filter(status=FaceImage.Status.ACCEPTED).exclude(crop="").order_by("pk").first()
    assert face is not None and face.image and face.crop
    return face


def media_path(face: FaceImage, kind: str) -> str:
    return f"/api/v1/people/{face.person_id}/faces/{face.pk}/{kind}/"


def key_client(user, role: str) -> APIClient:
    _, raw = ApiKey.issue(user, f"{role} key", role)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    return client


def outsider(who: str, staff_user, plain_user) -> APIClient:
    """Everyone who must not see a face: a client key and a kiosk key even on a staff account."""
    if who == "anonymous":
        return APIClient()
    if who == "user token":
        return token_client(plain_user)
    if who == "user session":
        client = APIClient()
        client.force_login(plain_user)
        return client
    return key_client(staff_user, Role.CLIENT if who == "client key" else Role.KIOSK)


def stored_bytes(field) -> bytes:
    with field.open("rb") as handle:
        return handle.read()


@pytest.mark.parametrize("kind", ["image", "crop"])
@pytest.mark.parametrize("who", ["anonymous", "user token", "user session", "client key", "kiosk key"])
def test_nobody_but_staff_gets_a_face_photo_or_crop(who, kind, staff_user, plain_user):
    face = accepted_face()
    response = outsider(who, staff_user, plain_user).get(media_path(face, kind))
    assert response.status_code in (401, 403), (who, response.status_code)
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] in ("not_authenticated", "permission_denied")
    assert stored_bytes(getattr(face, kind))[:64] not in response.content


@pytest.mark.parametrize("kind", ["image", "crop"])
def test_staff_get_the_stored_bytes_privately_with_the_files_own_content_type(kind, staff_api):
    face = accepted_face()
    response = staff_api.get(media_path(face, kind))
    assert response.status_code == 200
    data = b"".join(response.streaming_content)
    assert data == stored_bytes(getattr(face, kind))
    expected = "image/png" if data.startswith(PNG) else "image/jpeg" if data.startswith(b"\xff\xd8") else "image/webp"
    assert response["Content-Type"] == expected
    assert response["Cache-Control"] == "private, no-store"
    assert response["X-Content-Type-Options"] == "nosniff"


def test_a_staff_session_and_a_staff_role_key_get_the_crop_too(staff_user):
    face = accepted_face()
    session = APIClient()
    session.force_login(staff_user)
    for client in (session, key_client(staff_user, Role.STAFF)):
        response = client.get(media_path(face, "crop"))
        assert response.status_code == 200
        assert b"".join(response.streaming_content) == stored_bytes(face.crop)


def test_a_staff_role_key_on_a_plain_account_gets_no_face(plain_user):
    response = key_client(plain_user, Role.STAFF).get(media_path(accepted_face(), "image"))
    assert response.status_code == 403


def test_anything_but_a_stored_face_of_that_person_is_404(staff_api):
    face = accepted_face()
    other = FaceImage.objects.exclude(person=face.person).first()
    no_crop = FaceImage.objects.create(person=face.person, image=face.image.name)
    for path in (
        f"/api/v1/people/{other.person_id}/faces/{face.pk}/image/",  # someone else's photo under this person
        f"/api/v1/people/{face.person_id}/faces/999999/image/",
        f"/api/v1/people/{face.person_id}/faces/{no_crop.pk}/crop/",  # no crop on file
        f"/api/v1/people/{face.person_id}/faces/{face.pk}/original/",
        f"/api/v1/people/{face.person_id}/faces/..%2F..%2Fsettings.py/image/",
    ):
        response = staff_api.get(path)
        assert response.status_code == 404, path


def test_a_photo_missing_from_storage_is_a_clean_404(staff_api):
    face = FaceImage.objects.create(person=accepted_face().person, image="faces/never-stored.jpg")
    response = staff_api.get(media_path(face, "image"))
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def _reload_urls(debug: bool):
    import facesite.urls

    with override_settings(DEBUG=debug):
        importlib.reload(facesite.urls)
    clear_url_caches()


def _views(patterns):
    for entry in patterns:
        if isinstance(entry, URLResolver):
            yield from _views(entry.url_patterns)
        elif isinstance(entry, URLPattern):
            yield entry.callback


@pytest.fixture(params=[True, False], ids=["DEBUG on", "DEBUG off"])
def urls_built_with_debug(request):
    _reload_urls(request.param)
    yield request.param
    _reload_urls(False)


def test_media_paths_of_stored_files_are_404_for_everyone_with_debug_on_or_off(urls_built_with_debug, staff_user):
    from training.models import ModelVersion

    assert serve not in set(_views(get_resolver().url_patterns))
    face = accepted_face()
    version = ModelVersion.objects.create(number=9090, status=ModelVersion.Status.READY)
    version.labels.save("labels.json", ContentFile(b'{"people": []}'))
    stored = [face.image.name, face.crop.name, version.labels.name]
    session = APIClient()
    session.force_login(staff_user)
    with override_settings(DEBUG=urls_built_with_debug):
        for client in (APIClient(), token_client(staff_user), session):
            for name in stored:
                assert client.get(f"/media/{name}").status_code == 404, name


@pytest.mark.parametrize("debug", [True, False])
def test_the_apis_image_and_crop_urls_are_the_staff_view_and_serve_the_files(debug, staff_api):
    face = accepted_face()
    with override_settings(DEBUG=debug):
        listing = staff_api.get(f"/api/v1/people/{face.person_id}/faces/").json()["results"]
    row = next(r for r in listing if r["id"] == face.pk)
    for kind in ("image", "crop"):
        url = row[f"{kind}_url"]
        assert url == f"http://testserver{media_path(face, kind)}"
        response = staff_api.get(url)
        assert response.status_code == 200
        assert b"".join(response.streaming_content) == stored_bytes(getattr(face, kind))
        assert APIClient().get(url).status_code == 401


def test_admin_thumbnails_point_at_the_staff_view_and_load(client, staff_user):
    face = accepted_face()
    client.force_login(staff_user)
    pages = [
        f"/admin/people/person/{face.person_id}/change/",
        "/admin/people/faceimage/",
        f"/admin/people/faceimage/{face.pk}/change/",
    ]
    for page in pages:
        html = client.get(page).content.decode()
        sources = re.findall(r'<img src="([^"]+)"', html)
        assert media_path(face, "crop") in sources, page
        assert not [src for src in sources if src.startswith("/media/")], page
        assert '"/media/' not in html, page  # no link either (the photo field's "Currently:" link was one)
        for src in (src for src in sources if src.startswith("/api/v1/people/")):
            response = client.get(src)
            assert response.status_code == 200, src
            assert response["Content-Type"].startswith("image/")


def test_model_plots_are_served_to_readers_of_models_only(staff_user, plain_user):
    from training.models import ModelVersion

    version = ModelVersion.objects.create(number=9091, status=ModelVersion.Status.READY)
    version.confusion_plot.save("confusion.png", ContentFile(PNG + b"plot"))
    staff = token_client(staff_user)
    url = staff.get(f"/api/v1/models/{version.pk}/").json()["confusion_plot_url"]
    assert url == f"http://testserver/api/v1/models/{version.pk}/plots/confusion/"
    response = staff.get(url)
    assert response.status_code == 200 and response["Content-Type"] == "image/png"
    assert b"".join(response.streaming_content) == PNG + b"plot"
    assert staff.get(f"/api/v1/models/{version.pk}/plots/roc/").status_code == 404  # none on file
    assert token_client(plain_user).get(url).status_code == 403
    assert APIClient().get(url).status_code == 401


def test_the_model_version_page_shows_its_plots_through_the_permission_checked_view(client, staff_user):
    from training.models import ModelVersion

    version = ModelVersion.objects.create(number=9092, status=ModelVersion.Status.READY)
    version.roc_plot.save("roc.png", ContentFile(PNG + b"plot"))
    client.force_login(staff_user)
    html = client.get(f"/admin/training/modelversion/{version.pk}/change/").content.decode()
    assert f'<img src="/api/v1/models/{version.pk}/plots/roc/"' in html and '"/media/' not in html
    assert client.get(f"/api/v1/models/{version.pk}/plots/roc/").status_code == 200
