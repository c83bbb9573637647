"""people.tasks.requeue_pending: a photo is queued again only when its task was plausibly lost, never
while a long backlog is still being worked through.

The broker is the edge isolated here: queued tasks are recorded instead of sent, and the broker's
backlog is set by the test. Lost tasks on real processes (Redis restarting) are in tests/test_faults.py.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from people import services, tasks
from people.models import FaceImage

from .conftest import person_named

pytestmark = pytest.mark.django_db


@pytest.fixture
def broker(monkeypatch):
    """Records what is queued; ``broker.backlog`` is how many tasks wait in it."""

    class Broker:
        backlog: int | None = 0
        queued: list[int] = []

    recorder = Broker()
    recorder.queued = []
    monkeypatch.setattr(services, "async_task", lambda func, face_id, **kw: recorder.queued.append(face_id))
    monkeypatch.setattr(services, "broker_backlog", lambda: recorder.backlog)
    return recorder


def pending_photo(created_ago: float, queued_ago: float | None) -> FaceImage:
    now = timezone.now()
    face = FaceImage.objects.create(person=person_named("Paul Rudd"), image="faces/requeue-test.jpg")
    FaceImage.objects.filter(pk=face.pk).update(
        created_at=now - timedelta(seconds=created_ago),
        queued_at=None if queued_ago is None else now - timedelta(seconds=queued_ago),
    )
    return face


def test_queueing_a_photo_notes_when(broker):
    face = pending_photo(created_ago=0, queued_ago=None)
    assert services.queue_processing(face.pk)
    face.refresh_from_db()
    assert broker.queued == [face.pk] and abs((timezone.now() - face.queued_at).total_seconds()) < 5


def test_a_long_backlog_is_never_queued_twice(broker, settings):
    settings.ENROLLMENT_REQUEUE_AFTER_SECONDS = 900
    # A 300-photo import queued 10 minutes ago, still being worked through.
    backlog = [pending_photo(created_ago=600, queued_ago=600) for _ in range(300)]
    broker.backlog = 250
    for _ in range(5):  # five runs of the every-minute schedule
        assert tasks.requeue_pending() == 0
    assert broker.queued == []
    # Past the timeout but the broker still holds waiting tasks: they may be among them.
    FaceImage.objects.filter(pk__in=[f.pk for f in backlog]).update(queued_at=timezone.now() - timedelta(hours=2))
    assert tasks.requeue_pending() == 0 and broker.queued == []


def test_a_photo_stored_while_the_broker_was_down_is_queued_after_a_minute(broker):
    fresh = pending_photo(created_ago=10, queued_ago=None)
    missed = pending_photo(created_ago=90, queued_ago=None)
    broker.backlog = 40  # other work waiting does not hold up a photo that was never queued
    assert tasks.requeue_pending() == 1
    assert broker.queued == [missed.pk] and fresh.pk not in broker.queued
    # Now queued (and noted): the next run leaves it alone.
    assert tasks.requeue_pending() == 0 and broker.queued == [missed.pk]


def test_a_task_lost_after_queueing_is_queued_again_once_the_broker_is_idle_past_the_timeout(broker, settings):
    settings.ENROLLMENT_REQUEUE_AFTER_SECONDS = 900
    recent = pending_photo(created_ago=1200, queued_ago=300)
    lost = pending_photo(created_ago=1200, queued_ago=1000)
    done = pending_photo(created_ago=1200, queued_ago=1000)
    FaceImage.objects.filter(pk=done.pk).update(status=FaceImage.Status.ACCEPTED)

    broker.backlog = 3
    assert tasks.requeue_pending() == 0
    broker.backlog = None  # unreachable: nothing can be known (nor queued)
    assert tasks.requeue_pending() == 0
    broker.backlog = 0
    assert tasks.requeue_pending() == 1 and broker.queued == [lost.pk]
    assert recent.pk not in broker.queued and done.pk not in broker.queued
    assert tasks.requeue_pending() == 0  # re-queued just now: not again until the timeout passes


def test_a_photo_not_queued_because_the_broker_is_down_stays_unqueued(monkeypatch):
    def broker_down(*args, **kwargs):
        raise ConnectionError("Redis is down")

    monkeypatch.setattr(services, "async_task", broker_down)
    face = pending_photo(created_ago=90, queued_ago=None)
    assert not services.queue_processing(face.pk)
    face.refresh_from_db()
    assert face.queued_at is None and face.status == FaceImage.Status.PENDING
