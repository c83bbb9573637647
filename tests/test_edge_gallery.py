"""The edge gallery in bounded pages (GET /api/v1/edge/gallery/, checkin/edge_gallery.py) and the
kiosk following them (edge/sync.py): keyset pages, removals from the change log, erasure on every
path, a failed page, an older server; the manifest's bounded ``inactive_people``; the outbox
dropping a check-in refused for good."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from .conftest import person_named
from .test_edge_kiosk import checkin_body, kiosk_api, through_test_client  # noqa: F401  (kiosk_api: a fixture)
from .test_erasure import session_files_restored  # noqa: F401  (an erasure here deletes real files)

GALLERY = "/api/v1/edge/gallery/"
PAGED = {"pages": 1}  # this client follows pages (without it: the answer of the edge client before them)


def walk(api, since: str | None = None, **params) -> tuple[list[dict], str]:
    """Every page from ``since`` until one says no more: (the answers, the last cursor)."""
    pages = []
    while True:
        answer = api.get(GALLERY, {**PAGED, **({"since": since} if since else {}), **params}).json()
        pages.append(answer)
        since = answer["cursor"]
        if not answer["more"]:
            return pages, since


def in_gallery() -> set[int]:
    from people.models import FaceImage

    return set(FaceImage.objects.in_gallery().values_list("id", flat=True))


def device_faces(state) -> dict[int, int]:
    """face id -> person id of the gallery the device holds."""
    ids, people, _ = state.gallery()
    return dict(zip(ids.tolist(), people.tolist()))


# ---- the server's pages --------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_full_sync_comes_in_pages_no_larger_than_the_cap_and_the_last_says_no_more(kiosk_api, settings):  # noqa: F811
    settings.EDGE_GALLERY_PAGE_FACES = 3
    pages, _ = walk(kiosk_api)
    sent = [f["id"] for page in pages for f in page["faces"]]
    assert len(pages) > 2 and all(len(page["faces"]) <= 3 for page in pages)
    assert sorted(sent) == sorted(in_gallery())  # every face once, none twice
    assert pages[0]["start"] and all(page["full"] for page in pages) and not any(p["start"] for p in pages[1:])
    assert [page["more"] for page in pages] == [True] * (len(pages) - 1) + [False]
    assert len(kiosk_api.get(GALLERY, {**PAGED, "limit": 10**12}).json()["faces"]) == 3  # a huge limit is capped
    assert len(kiosk_api.get(GALLERY, {**PAGED, "limit": 2}).json()["faces"]) == 2


@pytest.mark.django_db
@pytest.mark.parametrize(
    "params, field",
    [
        ({"since": "soon"}, "since"),
        ({"since": "eyJmdWxsIjp0cnVlfQ:1tAmper:signature"}, "since"),
        ({"limit": "0"}, "limit"),
        ({"limit": "-5"}, "limit"),
        ({"limit": "lots"}, "limit"),
    ],
)
def test_a_bad_cursor_or_limit_is_a_400_in_the_error_shape(kiosk_api, params, field):  # noqa: F811
    response = kiosk_api.get(GALLERY, {**PAGED, **params})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid"
    assert field in response.json()["error"]["fields"]


@pytest.mark.django_db
def test_a_cursor_altered_by_the_device_is_refused(kiosk_api):  # noqa: F811
    cursor = kiosk_api.get(GALLERY, PAGED).json()["cursor"]
    forged = cursor[:-3] + ("AAA" if cursor[-3:] != "AAA" else "BBB")
    assert kiosk_api.get(GALLERY, {**PAGED, "since": forged}).status_code == 400


@pytest.mark.django_db
def test_faces_sharing_one_timestamp_are_neither_skipped_nor_repeated_across_pages(kiosk_api, settings):  # noqa: F811
    from people.models import FaceImage

    FaceImage.objects.update(updated_at=datetime(2026, 3, 1, 12, tzinfo=UTC))  # one bulk change: one time for all
    settings.EDGE_GALLERY_PAGE_FACES = 2
    pages, _ = walk(kiosk_api)
    sent = [f["id"] for page in pages for f in page["faces"]]
    assert len(sent) == len(set(sent)) and set(sent) == in_gallery()


@pytest.mark.django_db
def test_a_face_saved_while_the_page_is_read_is_sent_next_time(kiosk_api):  # noqa: F811
    """The race of the cursor read apart from the rows: a face changed between the page's query and
    the cursor's was never sent. The cursor is now the last row sent, so it comes with the next poll."""
    from django.db import connection
    from django.utils import timezone

    from people.models import FaceImage

    late = FaceImage.objects.in_gallery().order_by("updated_at", "id").first()
    done = []

    def change_a_face_after_the_rows_are_read(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if not done and '"people_faceimage"."embedding"' in sql:
            done.append(True)
            FaceImage.objects.filter(pk=late.pk).update(updated_at=timezone.now() + timedelta(seconds=1))
        return result

    with connection.execute_wrapper(change_a_face_after_the_rows_are_read):
        first = kiosk_api.get(GALLERY, PAGED).json()
    assert done and late.pk in {f["id"] for f in first["faces"]}  # sent with its embedding of before
    pages, _ = walk(kiosk_api, first["cursor"])
    assert late.pk in {f["id"] for page in pages for f in page["faces"]}  # and again, as changed


@pytest.mark.django_db
def test_a_face_changed_during_a_paged_full_sync_is_picked_up_by_the_next_delta(kiosk_api, settings):  # noqa: F811
    from people.models import FaceImage

    settings.EDGE_GALLERY_PAGE_FACES = 2
    first = kiosk_api.get(GALLERY, PAGED).json()
    sent = first["faces"][0]["id"]
    face = FaceImage.objects.get(pk=sent)
    face.save()  # changed after it was sent
    rejected = FaceImage.objects.get(pk=first["faces"][1]["id"])
    rejected.status = FaceImage.Status.REJECTED
    rejected.save()  # and another sent face left the gallery
    pages, cursor = walk(kiosk_api, first["cursor"])
    assert sent in {f["id"] for page in pages for f in page["faces"]}
    delta, _ = walk(kiosk_api, cursor)
    assert rejected.person_id in {p for page in delta for p in page["people"]}
    assert rejected.pk not in {f["id"] for page in delta for f in page["faces"]}


# ---- the kiosk following them --------------------------------------------------------------------


def deactivate_by_save(person) -> None:
    person.is_active = False
    person.save()  # as staff do it: it logs the gallery change (and queues a retrain, not run here)


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["delta", "resync after the log's horizon", "new device"])
def test_an_erased_or_deactivated_persons_faces_leave_the_kiosk_on_its_next_sync_over_pages(
    kiosk_api,  # noqa: F811
    staff_api,
    settings,
    django_capture_on_commit_callbacks,
    tmp_path,
    path,
):
    from edge.sync import State, sync_gallery

    settings.EDGE_GALLERY_PAGE_FACES = 2
    obama, biden = person_named("Barack Obama"), person_named("Joe Biden")
    server = through_test_client(kiosk_api)
    state = State(tmp_path / ("fresh" if path == "new device" else "kiosk"))
    if path != "new device":
        sync_gallery(server, state)
        assert {obama.pk, biden.pk} <= set(device_faces(state).values())
    with django_capture_on_commit_callbacks(execute=True):
        assert staff_api.delete(f"/api/v1/people/{obama.pk}/").status_code == 204
    deactivate_by_save(biden)
    if path == "resync after the log's horizon":
        settings.GALLERY_CHANGE_KEEP_HOURS = 0  # every cursor is older than the log kept
    sync_gallery(server, state)
    held = device_faces(state)
    assert obama.pk not in held.values() and biden.pk not in held.values()
    assert set(held) == in_gallery() and held  # the others' faces stay
    assert {str(obama.pk), str(biden.pk)}.isdisjoint(state.read()["names"])


@pytest.mark.django_db
def test_a_person_reactivated_gets_their_faces_back_on_the_kiosk(kiosk_api, tmp_path):  # noqa: F811
    from edge.sync import State, sync_gallery

    biden = person_named("Joe Biden")
    state = State(tmp_path / "kiosk")
    server = through_test_client(kiosk_api)
    sync_gallery(server, state)
    deactivate_by_save(biden)
    sync_gallery(server, state)
    assert biden.pk not in device_faces(state).values()
    biden.is_active = True
    biden.save()
    sync_gallery(server, state)
    assert set(device_faces(state)) == in_gallery() and biden.pk in device_faces(state).values()


@pytest.mark.django_db
def test_a_failed_page_leaves_the_previous_gallery_and_cursor_in_use(kiosk_api, settings, tmp_path):  # noqa: F811
    from edge.sync import Offline, State, sync_gallery

    settings.EDGE_GALLERY_PAGE_FACES = 2
    state = State(tmp_path / "kiosk")
    server = through_test_client(kiosk_api)
    sync_gallery(server, state)
    before, cursor = device_faces(state), state.read()["gallery_cursor"]
    deactivate_by_save(person_named("Joe Biden"))
    settings.GALLERY_CHANGE_KEEP_HOURS = 0  # a full resync: many pages

    class DropsOnPageTwo(type(server)):
        pages = 0

        def request(self, path, method="GET", body=None):
            self.pages += 1
            if self.pages == 2:
                raise Offline("the network went away")
            return super().request(path, method, body)

    with pytest.raises(Offline):
        sync_gallery(DropsOnPageTwo("http://testserver", "unused"), state)
    assert device_faces(state) == before and state.read()["gallery_cursor"] == cursor  # nothing half-applied
    sync_gallery(server, state)
    assert set(device_faces(state)) == in_gallery()


@pytest.mark.django_db
def test_a_cursor_the_server_no_longer_accepts_starts_a_full_sync(kiosk_api, tmp_path):  # noqa: F811
    from edge.sync import State, sync_gallery

    state = State(tmp_path / "kiosk")
    sync_gallery(through_test_client(kiosk_api), state)
    state.update(gallery_cursor="signed with a key the server has since rotated")
    sync_gallery(through_test_client(kiosk_api), state)
    assert set(device_faces(state)) == in_gallery() and state.read()["gallery_cursor"] != "signed"


@pytest.mark.django_db
def test_an_older_servers_whole_answer_still_syncs_the_kiosk(kiosk_api, tmp_path):  # noqa: F811
    """A server from before the pages: one answer with the changed faces and every face id."""
    import base64
    import json

    from edge.sync import State, sync_gallery
    from people.models import FaceImage

    server = through_test_client(kiosk_api)

    class OlderServer(type(server)):
        def request(self, path, method="GET", body=None):
            faces = FaceImage.objects.in_gallery().select_related("person")
            answer = {
                "cursor": "2026-03-01T12:00:00+00:00",
                "full": "since" not in path,
                "embedder": json.loads(super().request(GALLERY)[1])["embedder"],
                "dim": 128,
                "faces": [
                    {
                        "id": f.pk,
                        "person_id": f.person_id,
                        "name": f.person.name,
                        "embedding": base64.b64encode(bytes(f.embedding)).decode(),
                    }
                    for f in faces
                ],
                "ids": [f.pk for f in faces],
            }
            return 200, json.dumps(answer).encode()

    state = State(tmp_path / "kiosk")
    sync_gallery(OlderServer("http://testserver", "unused"), state)
    assert set(device_faces(state)) == in_gallery() and state.read()["gallery_cursor"] == "2026-03-01T12:00:00+00:00"
    deactivate_by_save(person_named("Joe Biden"))
    sync_gallery(OlderServer("http://testserver", "unused"), state)  # ids without his: dropped
    assert set(device_faces(state)) == in_gallery()
    sync_gallery(server, state)  # then the server is upgraded: its bare-time cursor starts a full sync
    assert set(device_faces(state)) == in_gallery()


@pytest.mark.django_db
def test_an_edge_client_from_before_the_pages_still_drops_erased_people_or_is_refused_on_a_large_gallery(
    kiosk_api,  # noqa: F811
    staff_api,
    settings,
    django_capture_on_commit_callbacks,
    tmp_path,
):
    """A kiosk not yet upgraded asks without ``pages=1`` and applies the one-answer sync (the same
    steps as this client's ``_sync_gallery_whole``): while the gallery fits a page it is served and
    an erasure reaches it through ``ids``; past that it is refused as a key, so it erases its copy."""
    from edge.sync import Refused, State, sync_gallery

    server = through_test_client(kiosk_api)

    class ClientBeforeThePages(type(server)):
        def request(self, path, method="GET", body=None):
            return super().request(path.replace("pages=1&", "").replace("?pages=1", ""), method, body)

    old = ClientBeforeThePages("http://testserver", "unused")
    state = State(tmp_path / "kiosk")
    sync_gallery(old, state)
    whole = kiosk_api.get(GALLERY).json()
    assert "more" not in whole and sorted(whole["ids"]) == sorted(in_gallery())  # the answer it was made for
    assert set(device_faces(state)) == in_gallery()
    assert datetime.fromisoformat(state.read()["gallery_cursor"]).tzinfo is not None  # its bare-time cursor
    obama = person_named("Barack Obama")
    with django_capture_on_commit_callbacks(execute=True):
        assert staff_api.delete(f"/api/v1/people/{obama.pk}/").status_code == 204
    sync_gallery(old, state)
    assert set(device_faces(state)) == in_gallery() and obama.pk not in device_faces(state).values()

    settings.EDGE_GALLERY_PAGE_FACES = len(in_gallery()) - 1
    answer = kiosk_api.get(GALLERY)
    assert answer.status_code == 403 and answer.json()["error"]["code"] == "permission_denied"
    assert "upgrade" in answer.json()["error"]["message"]
    with pytest.raises(Refused):
        sync_gallery(old, state)
    assert kiosk_api.get(GALLERY, PAGED).status_code == 200  # an upgraded client is served


# ---- the manifest's inactive people ----------------------------------------------------------------


def a_version(number: int, created_at: datetime, status: str = "archived"):
    from training.models import ModelVersion

    version = ModelVersion.objects.create(number=number, status=status)
    ModelVersion.objects.filter(pk=version.pk).update(created_at=created_at)
    return version


@pytest.mark.django_db
def test_the_manifest_lists_only_people_deactivated_since_the_devices_label_map_was_trained(kiosk_api):  # noqa: F811
    from people.models import Person
    from training.models import ModelVersion

    ModelVersion.objects.all().delete()
    now = datetime.now(UTC)
    a_version(1, now - timedelta(days=30))
    a_version(2, now - timedelta(days=3), status="active")
    long_ago, since_v1, since_v2 = (Person.objects.create(name=f"gone {i}", is_active=False) for i in range(3))
    Person.objects.filter(pk=long_ago.pk).update(updated_at=now - timedelta(days=60))  # before either was trained
    Person.objects.filter(pk=since_v1.pk).update(updated_at=now - timedelta(days=10))

    def listed(**query) -> set[int]:
        return set(kiosk_api.get("/api/v1/edge/manifest/", query).json()["inactive_people"]) & {
            long_ago.pk,
            since_v1.pk,
            since_v2.pk,
        }

    assert listed(version=2) == listed(version=0) == {since_v2.pk}  # the active map, or none yet: it is downloaded
    assert listed(version=1) == {since_v1.pk, since_v2.pk}  # an older map still names him
    assert listed(version=99) == listed() == {long_ago.pk, since_v1.pk, since_v2.pk}  # unknown, or an older client
    assert kiosk_api.get("/api/v1/edge/manifest/", {"version": "x"}).status_code == 400


# ---- the outbox: a record refused for good ---------------------------------------------------------


@pytest.mark.django_db
def test_the_outbox_drops_a_check_in_refused_for_good_counts_it_and_keeps_one_that_can_still_be_stored(
    kiosk_api,  # noqa: F811
    settings,
    tmp_path,
):
    from edge.outbox import Outbox

    settings.EDGE_CLOCK_SKEW_SECONDS = 300

    def at(**delta) -> str:
        return (datetime.now(UTC) + timedelta(**delta)).isoformat()

    outbox = Outbox(tmp_path / "outbox.sqlite3")
    far_ahead = checkin_body(checked_in_at=at(days=3))  # a clock years or days ahead: never in time
    ahead = checkin_body(checked_in_at=at(hours=2))  # stored in two hours
    waited = checkin_body(checked_in_at=at(hours=2))  # refused for more than a day already
    invalid = checkin_body(checked_in_at=at(minutes=-1), frames=0)
    for checkin in (far_ahead, ahead, waited, invalid):
        outbox.add(checkin)
    refused_long_ago = (datetime.now(UTC) - timedelta(hours=25)).isoformat()
    with outbox.db:
        outbox.db.execute("UPDATE pending SET first_refused_at = ? WHERE client_id = ?", (refused_long_ago, waited["client_id"]))
    reports = {r["client_id"]: r for r in outbox.upload(through_test_client(kiosk_api))}
    assert reports[far_ahead["client_id"]]["dropped"] == "checked_in_at_in_future"
    assert reports[waited["client_id"]]["dropped"] == "checked_in_at_in_future"
    assert reports[invalid["client_id"]]["dropped"] == "invalid"
    assert "dropped" not in reports[ahead["client_id"]] and reports[ahead["client_id"]]["status"] == 400
    assert [c["client_id"] for c in outbox.pending()] == [ahead["client_id"]]
    assert outbox.dropped_counts() == {"checked_in_at_in_future": 2, "invalid": 1}
    assert "dropped" not in {r.get("dropped") for r in outbox.upload(through_test_client(kiosk_api))}  # kept, again
    outbox.close()


@pytest.mark.django_db
def test_a_check_in_whose_client_id_another_device_used_is_dropped(kiosk_api, staff_user, tmp_path):  # noqa: F811
    from checkin.models import Kiosk
    from edge.outbox import Outbox
    from security.models import ApiKey

    from .test_edge_kiosk import key_client

    other = Kiosk(name="Back door")
    other.set_new_token()
    other.save()
    _, raw = ApiKey.issue(staff_user, "back door edge", role="kiosk", kiosk=other)
    body = checkin_body(checked_in_at=datetime.now(UTC).isoformat())
    assert key_client(raw).post("/api/v1/checkins/", body, format="json").status_code == 201
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    outbox.add(body)
    assert outbox.upload(through_test_client(kiosk_api))[0]["dropped"] == "client_id_taken"
    assert outbox.pending() == [] and outbox.dropped_counts() == {"client_id_taken": 1}
    outbox.close()
