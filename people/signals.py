"""Erasure: a deleted FaceImage takes its files with it (after the transaction commits)."""

from django.db import transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver

from .models import FaceImage


@receiver(post_delete, sender=FaceImage)
def delete_face_files(sender, instance: FaceImage, **kwargs):
    files = [f for f in (instance.image, instance.crop) if f and f.name]

    def remove():
        for f in files:
            f.storage.delete(f.name)

    transaction.on_commit(remove)
