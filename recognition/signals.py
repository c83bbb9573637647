"""A deleted face leaves this process's copy of the gallery at once (the next request reloads it);
other processes see it through the gallery's freshness check."""

from django.db import transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver

from people.models import FaceImage

from . import services


@receiver(post_delete, sender=FaceImage)
def forget_gallery(sender, instance: FaceImage, **kwargs):
    transaction.on_commit(services.invalidate_gallery)
