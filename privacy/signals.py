"""Erasure reaches the audit log and the check-ins: an erased person's id is removed from the audit
events that named them, and their check-ins are deleted (ERASE_CHECKINS_WITH_PERSON, the default)
or kept anonymised (the foreign key is set to null)."""

from django.conf import settings
from django.db.models.signals import post_delete, pre_delete
from django.dispatch import receiver

from people.models import Person
from recognition.models import CheckIn
from security.models import AuditEvent, person_ids_field


@receiver(pre_delete, sender=Person)
def erase_checkins(sender, instance: Person, **kwargs):
    if settings.ERASE_CHECKINS_WITH_PERSON:
        CheckIn.objects.filter(person=instance).delete()


@receiver(post_delete, sender=Person)
def forget_person_in_audit_log(sender, instance: Person, **kwargs):
    for event in AuditEvent.objects.about(instance.pk):
        result = dict(event.result)
        if "matches" in result:
            result["matches"] = [m for m in result["matches"] if m.get("person_id") != instance.pk]
        if result.get("person_id") == instance.pk:
            result["person_id"] = None
        result["erased_people"] = result.get("erased_people", 0) + 1
        kept = [int(i) for i in event.person_ids.strip(",").split(",") if i and int(i) != instance.pk]
        AuditEvent.objects.filter(pk=event.pk).update(result=result, person_ids=person_ids_field(kept))
