"""Retrain when a person is activated or deactivated (it changes who can be recognized), remove a
deleted model version's files, and take a deleted photo out of every version's label map.

The other gallery changes ask for it explicitly where they are made: a face accepted
(recognition/enrollment.py) and an erasure (privacy/services.py) call
``training.services.enrollment_changed``; a face approved or deleted (people/services.py) queues
``training.tasks.enrollment_changed`` by dotted path. (De)activation is saved by the generic admin form and API update, so it is
caught here, and only when ``is_active`` really changed: editing a name or notes queues nothing.
"""

from django.db import transaction
from django.db.models.signals import post_delete, post_save, pre_delete, pre_save
from django.dispatch import receiver

from facesite.oncommit import after_commit_once
from people.models import FaceImage, Person

from . import redaction, services
from .models import ModelVersion, PendingRedaction


@receiver(pre_save, sender=Person)
def remember_activity(sender, instance: Person, **kwargs):
    if instance.pk is None:
        instance._stored_is_active = None
        return
    instance._stored_is_active = Person.objects.filter(pk=instance.pk).values_list("is_active", flat=True).first()


@receiver(post_save, sender=Person)
def activity_changed(sender, instance: Person, created: bool, **kwargs):
    stored = getattr(instance, "_stored_is_active", None)
    if created or stored is None or stored == instance.is_active:
        return  # a new person has no faces yet; other edits do not change the gallery
    transaction.on_commit(services.enrollment_changed)


VERSION_FILES = ("labels", "head", "confusion_plot", "roc_plot")


@receiver(pre_delete, sender=ModelVersion)
def remember_version_files(sender, instance: ModelVersion, **kwargs):
    """The files the row names now: a redaction may have replaced one since ``instance`` was read
    (it holds the row's lock until it commits, so this waits for it)."""
    stored = ModelVersion.objects.select_for_update().filter(pk=instance.pk).values_list(*VERSION_FILES).first()
    instance._stored_files = [name for name in stored or () if name]


@receiver(post_delete, sender=ModelVersion)
def delete_version_files(sender, instance: ModelVersion, **kwargs):
    """A deleted version takes its label map, head and plots with it (they name people); the
    TFLite embedder is shared between versions and holds no person."""
    storage = ModelVersion._meta.get_field("labels").storage
    names = {getattr(instance, field).name for field in VERSION_FILES if getattr(instance, field)}
    names |= set(getattr(instance, "_stored_files", ()))
    transaction.on_commit(lambda: [storage.delete(name) for name in sorted(names)])


@receiver(post_delete, sender=FaceImage)
def forget_deleted_face(sender, instance: FaceImage, **kwargs):
    """Every model version's label map holds the raw embedding of each photo it was trained on: a
    deleted photo leaves them all. It is noted in this transaction (``PendingRedaction``: its id,
    when it was added) and a task, queued once per transaction after the commit, redacts every
    photo noted so far in one pass (versions finished before the photo was added are not read)."""
    PendingRedaction.objects.create(face_id=instance.pk, added_at=instance.created_at)
    after_commit_once(redaction.queue_redaction, [True])
