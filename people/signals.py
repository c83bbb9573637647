"""Erasure: a deleted FaceImage takes its files with it (after the transaction commits).

The gallery's change log (``GalleryChange``): every save or delete that can change who the gallery
matches writes a row in the same transaction, so every process applies it on its next request. Paths
that bypass ``save()`` (queryset updates in recognition/enrollment.py and recognition/tasks.py, the
bulk import in people/bulk.py) record their rows themselves.
"""

from django.db import transaction
from django.db.models.signals import post_delete, post_save, pre_save
from django.dispatch import receiver

from .models import FaceImage, GalleryChange, Person


@receiver(post_delete, sender=FaceImage)
def delete_face_files(sender, instance: FaceImage, **kwargs):
    files = [f for f in (instance.image, instance.crop, instance.region) if f and f.name]

    def remove():
        for f in files:
            f.storage.delete(f.name)

    transaction.on_commit(remove)


def _in_gallery_state(status: str, has_embedding: bool) -> bool:
    return status == FaceImage.Status.ACCEPTED and has_embedding


@receiver(pre_save, sender=FaceImage)
def remember_face_state(sender, instance: FaceImage, raw: bool = False, **kwargs):
    instance._gallery_stored = None
    if instance.pk is not None and not raw:
        stored = FaceImage.objects.filter(pk=instance.pk).values_list("person_id", "status", "embedding").first()
        if stored is not None:
            instance._gallery_stored = (stored[0], _in_gallery_state(stored[1], stored[2] is not None))


@receiver(post_save, sender=FaceImage)
def log_face_change(sender, instance: FaceImage, created: bool, **kwargs):
    now_in = _in_gallery_state(instance.status, instance.embedding is not None)
    stored = getattr(instance, "_gallery_stored", None)
    if stored is None:
        if now_in:
            GalleryChange.objects.record(GalleryChange.Kind.FACE, [instance.person_id])
        return
    person_before, was_in = stored
    if was_in != now_in or (person_before != instance.person_id and (was_in or now_in)):
        GalleryChange.objects.record(GalleryChange.Kind.FACE, {person_before, instance.person_id})


@receiver(post_delete, sender=FaceImage)
def log_face_deleted(sender, instance: FaceImage, **kwargs):
    if _in_gallery_state(instance.status, instance.embedding is not None):
        GalleryChange.objects.record(GalleryChange.Kind.FACE, [instance.person_id])


@receiver(pre_save, sender=Person)
def remember_person_activity(sender, instance: Person, raw: bool = False, **kwargs):
    instance._gallery_was_active = None
    if instance.pk is not None and not raw:
        instance._gallery_was_active = Person.objects.filter(pk=instance.pk).values_list("is_active", flat=True).first()


@receiver(post_save, sender=Person)
def log_person_activity(sender, instance: Person, created: bool, **kwargs):
    was = getattr(instance, "_gallery_was_active", None)
    if not created and was is not None and was != instance.is_active:
        GalleryChange.objects.record(GalleryChange.Kind.PERSON, [instance.pk])


@receiver(post_delete, sender=Person)
def log_person_deleted(sender, instance: Person, **kwargs):
    GalleryChange.objects.record(GalleryChange.Kind.ERASED, [instance.pk])
