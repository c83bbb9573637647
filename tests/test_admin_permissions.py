"""Admin actions and API keys ask for the permission that matches what they do.

Every admin action names the permission it needs: a staff user who may only view a list is not
offered its actions, and posting one anyway changes nothing; a staff user given the permission
runs it. An API key made in the admin by anyone but a superuser is for that user, with a role
within their rights; once made, its user, role and kiosk stay as they are and a revoked key stays
revoked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from django.contrib.auth.models import Permission
from django.test import Client, override_settings
from django.utils import timezone

from checkin.models import Kiosk
from integrations.models import Delivery, Webhook
from people.models import FaceImage, Person
from security.models import ApiKey, Role
from training.models import ModelVersion
from visitors.models import Visitor

pytestmark = pytest.mark.django_db


def staff_with(django_user_model, *perms: str, username: str = "editor"):
    """A signed-in staff user (not a superuser) holding exactly ``perms`` ("app.codename")."""
    user = django_user_model.objects.create_user(username, password="editor-pass-123", is_staff=True)
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    client = Client()
    client.force_login(user)
    return user, client


def offered_actions(client, changelist: str) -> set[str]:
    response = client.get(changelist)
    assert response.status_code == 200
    form = response.context["action_form"]
    return set() if form is None else {name for name, _ in form.fields["action"].choices if name}


def run_action(client, changelist: str, action: str, pk: int):
    return client.post(changelist, {"action": action, "_selected_action": [pk], "index": 0})


# ---- the actions ----------------------------------------------------------------------------------


@dataclass
class Case:
    """One admin action: where it is, what lets a user see the list, what lets them run it, and
    how to tell that it ran."""

    changelist: str
    action: str
    viewer: tuple[str, ...]
    runner: tuple[str, ...]
    not_enough: tuple[tuple[str, ...], ...]  # more than viewing, still not enough
    make: Callable[[], object]  # the selected row
    ran: Callable[[object, object], bool]  # (row, response) -> did the action take effect?


def _kiosk() -> Kiosk:
    kiosk = Kiosk(name="Front door")
    kiosk.set_new_token()
    kiosk.save()
    return kiosk


def _token_changed(kiosk, response) -> bool:
    return Kiosk.objects.get(pk=kiosk.pk).token_hash != kiosk.token_hash


def _held_face() -> FaceImage:
    face = FaceImage.objects.filter(status=FaceImage.Status.ACCEPTED).first()
    FaceImage.objects.filter(pk=face.pk).update(status=FaceImage.Status.REVIEW, reason_code="possible_mislabel")
    return face


def _ready_version() -> ModelVersion:
    return ModelVersion.objects.create(number=9402, status=ModelVersion.Status.READY)


def _webhook() -> Webhook:
    # Port 9 (discard) on loopback refuses the connection: a send is a failed delivery, at once.
    return Webhook.objects.create(url="http://127.0.0.1:9/hook", events=["checkin.created"], secret="s" * 16)


def _failed_delivery() -> Delivery:
    return Delivery.objects.create(webhook=_webhook(), event="webhook.test", payload={}, status="failed", attempts=1)


def _visitor() -> Visitor:
    now = timezone.now()
    return Visitor.objects.create(first_seen_at=now, last_seen_at=now)


def _someone_elses_key(django_user_model) -> ApiKey:
    owner = django_user_model.objects.create_user("integration")
    return ApiKey.issue(owner, "integration", Role.CLIENT)[0]


def _queued(face_ids: list[int]):
    return lambda row, response: bool(face_ids)


CASES = {
    "issue_new_token": lambda **_: Case(
        "/admin/checkin/kiosk/", "issue_new_token", ("checkin.view_kiosk",), ("checkin.change_kiosk",), (), _kiosk, _token_changed
    ),
    "issue_api_key": lambda **_: Case(
        "/admin/checkin/kiosk/",
        "issue_api_key",
        ("checkin.view_kiosk",),
        ("checkin.change_kiosk", "security.add_apikey"),
        (("checkin.change_kiosk",), ("security.add_apikey",)),
        _kiosk,
        lambda kiosk, response: ApiKey.objects.filter(kiosk=kiosk, role=Role.KIOSK).exists(),
    ),
    "activate_selected": lambda **_: Case(
        "/admin/training/modelversion/",
        "activate_selected",
        ("training.view_modelversion",),
        ("training.change_modelversion",),
        (),
        _ready_version,
        lambda version, response: getattr(ModelVersion.objects.active(), "pk", None) == version.pk,
    ),
    "approve": lambda **_: Case(
        "/admin/people/faceimage/",
        "approve",
        ("people.view_faceimage",),
        ("people.change_faceimage",),
        (),
        _held_face,
        lambda face, response: FaceImage.objects.get(pk=face.pk).status == FaceImage.Status.ACCEPTED,
    ),
    "reprocess": lambda queued, **_: Case(
        "/admin/people/faceimage/",
        "reprocess",
        ("people.view_faceimage",),
        ("people.change_faceimage",),
        (),
        lambda: FaceImage.objects.exclude(image="").first(),
        _queued(queued),
    ),
    "reprocess_photos": lambda queued, **_: Case(
        "/admin/people/person/",
        "reprocess_photos",
        ("people.view_person",),
        ("people.change_person",),
        (),
        lambda: Person.objects.filter(faces__status=FaceImage.Status.ACCEPTED).first(),
        _queued(queued),
    ),
    "export_data": lambda **_: Case(
        "/admin/people/person/",
        "export_data",
        ("people.view_person",),
        ("people.export_person",),
        (("people.change_person",), ("people.delete_person",)),
        lambda: Person.objects.filter(faces__status=FaceImage.Status.ACCEPTED).first(),
        lambda person, response: response.get("Content-Type") == "application/zip",
    ),
    "send_test_event": lambda **_: Case(
        "/admin/integrations/webhook/",
        "send_test_event",
        ("integrations.view_webhook",),
        ("integrations.change_webhook",),
        (),
        _webhook,
        lambda hook, response: hook.deliveries.exists(),
    ),
    "retry": lambda **_: Case(
        "/admin/integrations/delivery/",
        "retry",
        ("integrations.view_delivery",),
        ("integrations.change_webhook",),
        (("integrations.view_webhook",), ("integrations.delete_delivery",)),
        _failed_delivery,
        lambda delivery, response: Delivery.objects.get(pk=delivery.pk).attempts > 1,
    ),
    "discard_selected": lambda **_: Case(
        "/admin/visitors/visitor/",
        "discard_selected",
        ("visitors.view_visitor",),
        ("visitors.delete_visitor",),
        (),
        _visitor,
        lambda visitor, response: not Visitor.objects.filter(pk=visitor.pk).exists(),
    ),
    "revoke": lambda django_user_model, **_: Case(
        "/admin/security/apikey/",
        "revoke",
        ("security.view_apikey",),
        ("security.change_apikey",),
        (("security.add_apikey",),),
        lambda: _someone_elses_key(django_user_model),
        lambda key, response: ApiKey.objects.get(pk=key.pk).revoked_at is not None,
    ),
}


@pytest.fixture
def case(request, django_user_model, monkeypatch):
    """The action's Case; re-processing is recorded at the service's door instead of run (the
    detector's work is not what is tested here)."""
    queued: list[int] = []
    monkeypatch.setattr("people.services.queue_processing", queued.append)
    with override_settings(WEBHOOK_ALLOW_PRIVATE=True, WEBHOOK_MAX_ATTEMPTS=1):
        yield CASES[request.param](queued=queued, django_user_model=django_user_model)


@pytest.mark.parametrize("case", list(CASES), indirect=True)
def test_a_view_only_staff_user_is_not_offered_the_action_and_posting_it_changes_nothing(case, django_user_model):
    row = case.make()
    for extra in ((), *case.not_enough):
        user, client = staff_with(django_user_model, *case.viewer, *extra, username=f"viewer{len(extra)}{'-'.join(extra)}"[:150])
        assert case.action not in offered_actions(client, case.changelist), extra
        response = run_action(client, case.changelist, case.action, row.pk)
        assert response.status_code in (200, 302) and response.get("Content-Type", "").startswith("text/html")
        assert not case.ran(row, response), extra
    assert not ApiKey.objects.filter(user__username__startswith="viewer").exists()


@pytest.mark.parametrize("case", list(CASES), indirect=True)
def test_a_staff_user_with_the_permission_is_offered_the_action_and_runs_it(case, django_user_model):
    row = case.make()
    _, client = staff_with(django_user_model, *case.viewer, *case.runner)
    assert case.action in offered_actions(client, case.changelist)
    response = run_action(client, case.changelist, case.action, row.pk)
    assert response.status_code in (200, 302)
    assert case.ran(row, response)


# ---- API keys (D6) --------------------------------------------------------------------------------


def add_key(client, **fields):
    form = {"name": "mine", "role": Role.CLIENT, "revoked_at_0": "", "revoked_at_1": "", **fields}
    return client.post("/admin/security/apikey/add/", form, follow=True)


def change_key(client, key: ApiKey, **fields):
    form = {"name": key.name, "revoked_at_0": "", "revoked_at_1": "", **fields}
    return client.post(f"/admin/security/apikey/{key.pk}/change/", form, follow=True)


def test_a_staff_user_who_may_add_keys_cannot_make_one_for_a_superuser(django_user_model, staff_user):
    editor, client = staff_with(django_user_model, "security.add_apikey")
    form = client.get("/admin/security/apikey/add/").context["adminform"].form
    assert [pk for pk, _ in form.fields["user"].choices if pk] == [editor.pk]

    refused = add_key(client, user=staff_user.pk, role=Role.STAFF)
    assert refused.status_code == 200 and "New key for" not in refused.content.decode()
    assert "user" in refused.context["adminform"].form.errors
    assert not ApiKey.objects.exists()

    made = add_key(client, user=editor.pk, role=Role.STAFF)
    assert "New key for mine:" in made.content.decode()
    assert ApiKey.objects.get().user == editor


def test_a_kiosk_key_in_the_admin_takes_the_right_to_change_kiosks(django_user_model, kiosk):
    editor, client = staff_with(django_user_model, "security.add_apikey")
    refused = add_key(client, user=editor.pk, role=Role.KIOSK, kiosk=kiosk.pk)
    assert "role" in refused.context["adminform"].form.errors and not ApiKey.objects.exists()

    editor.user_permissions.add(Permission.objects.get(content_type__app_label="checkin", codename="change_kiosk"))
    add_key(client, user=editor.pk, role=Role.KIOSK, kiosk=kiosk.pk)
    assert ApiKey.objects.get().kiosk == kiosk


def test_a_superuser_still_makes_keys_for_any_account(client, staff_user, plain_user):
    client.force_login(staff_user)
    made = add_key(client, user=plain_user.pk, role=Role.CLIENT)
    assert "New key for mine:" in made.content.decode()
    assert ApiKey.objects.get().user == plain_user


def test_a_keys_user_and_role_stay_as_issued(django_user_model, plain_user):
    key = ApiKey.issue(plain_user, "integration", Role.CLIENT)[0]
    editor, client = staff_with(django_user_model, "security.view_apikey", "security.change_apikey")
    change_key(client, key, name="renamed", user=editor.pk, role=Role.STAFF)
    key.refresh_from_db()
    assert (key.name, key.user, key.role) == ("renamed", plain_user, Role.CLIENT)


def test_a_key_can_be_revoked_on_its_page_but_not_brought_back(django_user_model, plain_user, staff_user):
    key = ApiKey.issue(plain_user, "integration", Role.CLIENT)[0]
    _, client = staff_with(django_user_model, "security.view_apikey", "security.change_apikey")
    change_key(client, key, revoked_at_0="2026-01-02", revoked_at_1="10:00:00")
    key.refresh_from_db()
    assert key.revoked_at is not None
    revoked_at = key.revoked_at

    for user_client in (client, _signed_in(staff_user)):  # not even a superuser clears it
        change_key(user_client, key)
        key.refresh_from_db()
        assert key.revoked_at == revoked_at


def _signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client
