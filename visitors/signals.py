"""A deleted sighting takes its crop file with it, after the transaction commits (any path: a purge,
a withdrawn consent, a discarded visitor, a cascade)."""

from django.db import transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver

from .models import Sighting


@receiver(post_delete, sender=Sighting)
def delete_crop_file(sender, instance: Sighting, **kwargs):
    if instance.crop and instance.crop.name:
        name, storage = instance.crop.name, instance.crop.storage
        transaction.on_commit(lambda: storage.delete(name))
