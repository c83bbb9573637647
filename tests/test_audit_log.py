"""The audit log keeps nobody an erasure took out, even in events written after it (a check-in socket's
summary when it closes), and keeps every event whatever the number of people it names, findable for
each of them (their data export, their erasure)."""

from __future__ import annotations

import json

import pytest
from channels.db import database_sync_to_async
from django.db import connection

from people.models import Person
from privacy.services import erase_person
from security.audit import record_stream_event
from security.models import ApiKey, AuditEvent, Role

from .conftest import person_named
from .test_checkin_feed import stream_until_checked_in
from .test_live_stream import open_with_consent
from .test_ws_limits import LACAMOIRE, keyed, run


@pytest.fixture(autouse=True)
def _keep_the_test_transaction(monkeypatch):
    """The consumer's ORM calls share the test's transaction (see tests/test_live_stream.py)."""
    monkeypatch.setattr("channels.db.close_old_connections", lambda: None)


def people(n: int) -> list[int]:
    Person.objects.bulk_create(Person(name=f"Visitor {i}", legal_basis="explicit_consent") for i in range(n))
    return list(Person.objects.filter(name__startswith="Visitor ").order_by("pk").values_list("pk", flat=True))


# ---- nobody erased comes back ----------------------------------------------------------------------


@pytest.mark.django_db
def test_a_socket_open_during_an_erasure_writes_no_trace_of_the_person_when_it_closes(staff_user, kiosk, settings):
    settings.CHECKIN_STABLE_FRAMES = 4
    _, raw = ApiKey.issue(staff_user, "door pi", Role.KIOSK, kiosk=kiosk)
    lacamoire = person_named("Alex Lacamoire")
    pid = lacamoire.pk

    async def scenario():
        communicator = keyed(raw)
        await open_with_consent(communicator)
        greeting = await stream_until_checked_in(communicator, LACAMOIRE)
        # erased while the socket, which named him, is still open
        await database_sync_to_async(erase_person)(lacamoire, by=staff_user)
        await communicator.disconnect()
        return greeting

    assert run(scenario)["person_id"] == pid
    assert not AuditEvent.objects.about(pid).exists()
    summary = AuditEvent.objects.get(action="stream")  # counts only: it names nobody
    assert summary.person_ids == ""
    assert summary.result["identified"] == 1 and summary.result["checkins"] == 1
    for event in AuditEvent.objects.all():
        assert event.result.get("person_id") is None and pid not in event.result.get("matched", []), event.result


@pytest.mark.django_db
def test_an_event_written_after_an_erasure_keeps_only_the_people_still_held():
    kept, erased = people(2)
    Person.objects.filter(pk=erased).delete()

    record_stream_event("stream", result={"matched": [kept, erased], "frames": 9}, person_ids=[kept, erased])
    record_stream_event("stream_identify", result={"person_id": erased, "similarity": 0.8}, person_ids=[erased])
    AuditEvent.objects.create(
        action="recognize",
        actor="x",
        status_code=200,
        result={"faces": 2, "matches": [{"person_id": kept, "similarity": 0.9}, {"person_id": erased, "similarity": 0.7}]},
        person_ids=f",{kept},{erased},",
    )

    assert not AuditEvent.objects.about(erased).exists()
    stream, identify, recognize = AuditEvent.objects.order_by("id")
    assert stream.person_ids == f",{kept}," and stream.result == {"matched": [kept], "frames": 9, "erased_people": 1}
    assert identify.person_ids == "" and identify.result == {"person_id": None, "similarity": 0.8, "erased_people": 1}
    assert recognize.result["matches"] == [{"person_id": kept, "similarity": 0.9}] and recognize.result["erased_people"] == 1
    assert list(AuditEvent.objects.about(kept)) == [recognize, stream]


# ---- any number of people --------------------------------------------------------------------------


@pytest.mark.django_db
def test_an_event_naming_400_people_is_written_and_found_for_each_of_them(staff_user):
    ids = people(400)
    record_stream_event("stream", user=staff_user, result={"matched": ids}, person_ids=ids)

    event = AuditEvent.objects.get(action="stream")  # the row was written (a 1,000-character cap lost it)
    assert len(event.person_ids) > 1000
    event.full_clean()  # and it is valid for its field
    for pid in (ids[0], ids[199], ids[-1]):
        assert list(AuditEvent.objects.about(pid)) == [event]
    assert event.result["matched"] == ids


@pytest.mark.django_db
def test_on_postgresql_a_persons_events_are_found_through_an_index():
    if connection.vendor != "postgresql":
        pytest.skip("the trigram index is PostgreSQL's")
    query = AuditEvent.objects.about(1234).only("id")
    sql, params = query.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")  # the table is small: show the index can serve it
        cursor.execute(f"EXPLAIN {sql}", params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "security_auditevent_person_ids_trgm" in plan, plan


# ---- an erasure and an event written at the same moment --------------------------------------------

SETUP = """
import json
from people.models import Person
erased, kept = (Person.objects.create(name=n, legal_basis="explicit_consent") for n in ("Audit Race Erased", "Audit Race Kept"))
print(json.dumps({"erased": erased.pk, "kept": kept.pk}))
"""

# An erasure that, having cleaned the audit log, takes 6 s before it commits (its event about
# the person is written in that time).
SLOW_ERASURE = """
import time
from people.models import Person
from privacy import services
forget = services._forget_in_task_records
held = []
def slow(pid, name):
    done = forget(pid, name)
    print("audit log cleaned", flush=True)
    time.sleep(6)
    held.append(time.time())  # it commits after this
    return done
services._forget_in_task_records = slow
services.erase_person(Person.objects.get(pk={erased}))
print("committed", held[0], flush=True)
"""

WRITE_EVENT = """
import json, time
from security.audit import record_stream_event
from security.models import AuditEvent
record_stream_event("stream", result={{"matched": [{erased}, {kept}]}}, person_ids=[{erased}, {kept}])
event = AuditEvent.objects.filter(action="stream").latest("id")
print(json.dumps({{"person_ids": event.person_ids, "result": event.result, "at": time.time()}}))
"""

COUNT_ABOUT = """
from security.models import AuditEvent
print(AuditEvent.objects.about({erased}).count())
"""


@pytest.mark.servers
@pytest.mark.django_db
def test_an_event_written_while_an_erasure_commits_waits_and_leaves_the_person_out(live_site):
    made = json.loads(live_site.manage("shell", "-v", "0", "-c", SETUP).stdout.strip().splitlines()[-1])
    erasure = live_site.shell(SLOW_ERASURE.format(**made))
    try:
        assert erasure.stdout.readline().strip() == "audit log cleaned", erasure.stderr.read()
        written = live_site.manage("shell", "-v", "0", "-c", WRITE_EVENT.format(**made), timeout=120)
        out, err = erasure.communicate(timeout=60)
    finally:
        erasure.kill()
    assert erasure.returncode == 0 and "committed" in out, err
    held_until = float(out.split()[-1])  # the erasure commits after this
    event = json.loads(written.stdout.strip().splitlines()[-1])
    assert event.pop("at") > held_until, "the event was written before the erasure committed"
    assert event == {"person_ids": f",{made['kept']},", "result": {"matched": [made["kept"]], "erased_people": 1}}
    assert live_site.manage("shell", "-v", "0", "-c", COUNT_ABOUT.format(**made)).stdout.strip() == "0"
