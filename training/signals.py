"""Retrain when a person is activated or deactivated (it changes who can be recognised).

The other gallery changes call ``training.services.enrollment_changed`` explicitly from the services
that make them (a face accepted, approved or deleted: people/services.py; an erasure:
privacy/services.py). (De)activation is saved by the generic admin form and API update, so it is
caught here, and only when ``is_active`` really changed: editing a name or notes queues nothing.
"""

from django.db import transaction
from django.db.models.signals import post_save, pre_save
from django.dispatch import receiver

from people.models import Person


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
    from . import services

    transaction.on_commit(services.enrollment_changed)
