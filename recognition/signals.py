"""Erasure on disk: a deleted photo or person leaves the gallery snapshot when the deletion commits.

The snapshot (recognition/gallery.py) holds raw embeddings of every matchable face. The change log
makes every process stop matching a deleted face at once, but the file on disk would keep its
embedding until the next scheduled rewrite; whatever path deleted the row (a staff delete, the
admin's bulk delete, an erasure, a cascade), it is rewritten without it in the same request.
"""

from django.db.models.signals import post_delete
from django.dispatch import receiver

from people.models import FaceImage, Person

from .gallery import forget_after_commit


@receiver(post_delete, sender=FaceImage)
def forget_deleted_face(sender, instance: FaceImage, **kwargs):
    forget_after_commit(face_ids=[instance.pk])


@receiver(post_delete, sender=Person)
def forget_deleted_person(sender, instance: Person, **kwargs):
    forget_after_commit(person_ids=[instance.pk])
