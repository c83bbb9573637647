"""Retrain after the gallery changes: a face accepted or removed, a person (de)activated or erased.

Every change asks for a debounced run (``services.enrollment_changed``); the database keeps at
most one queued run, so a burst of uploads gives one retrain."""

from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from people.models import FaceImage, Person


def _after_commit() -> None:
    from . import services

    transaction.on_commit(services.enrollment_changed)


@receiver(post_save, sender=FaceImage)
def face_saved(sender, instance: FaceImage, **kwargs):
    if instance.status == FaceImage.Status.ACCEPTED and instance.embedding is not None:
        _after_commit()


@receiver(post_delete, sender=FaceImage)
def face_deleted(sender, instance: FaceImage, **kwargs):
    if instance.status == FaceImage.Status.ACCEPTED:
        _after_commit()


@receiver(post_save, sender=Person)
def person_saved(sender, instance: Person, created: bool, **kwargs):
    if not created:  # a new person has no faces yet; (de)activation changes who can be recognised
        _after_commit()
