"""API keys with a role, and the audit log of recognition and verification calls."""

from __future__ import annotations

import hashlib
import secrets

from django.apps import apps
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connections, models, router, transaction
from django.utils import timezone


class Role(models.TextChoices):
    STAFF = "staff", "Staff (enroll, recognize, verify, stream)"
    CLIENT = "client", "API client (recognize, verify, read people)"
    KIOSK = "kiosk", "Kiosk (live stream only)"


# What each role may do. A view names the scope it needs (`token_scope`); "*" is every scope.
ROLE_SCOPES: dict[str, frozenset[str]] = {
    Role.STAFF: frozenset({"*"}),
    Role.CLIENT: frozenset({"recognize", "verify", "read"}),
    Role.KIOSK: frozenset({"stream", "edge_sync"}),  # edge_sync: model files, gallery delta, offline check-ins
}


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


class ApiKeyQuerySet(models.QuerySet):
    def usable(self):
        return self.filter(revoked_at__isnull=True, user__is_active=True)


class ApiKey(models.Model):
    """A named token for one machine (an integration, a kiosk), limited to one role.

    Only a hash of the key is stored; the key itself is shown once, when it is created. Revoking
    (in the admin) takes effect on the next request.
    """

    name = models.CharField(max_length=100, help_text="Who or what uses this key, e.g. 'front door kiosk'.")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="api_keys",
        help_text="The account the key acts for; the key never has more rights than this user.",
    )
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.CLIENT)
    prefix = models.CharField(
        max_length=8, db_index=True, editable=False, help_text="The key's first characters, to tell keys apart."
    )
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, help_text="Set to revoke the key.")
    # A kiosk-role key acts as this kiosk on /ws/identify/ (its liveness setting, its check-ins).
    # SET_NULL: deleting the kiosk leaves the key row for the audit trail, unbound and so refused.
    kiosk = models.ForeignKey(
        "checkin.Kiosk",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="api_keys",
        help_text="Kiosk keys only: the kiosk this key streams as. A kiosk key without one is refused.",
    )

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.role}, {self.prefix}…)"

    def clean(self):
        super().clean()
        if self.role == Role.KIOSK and self.kiosk_id is None:
            raise ValidationError({"kiosk": "A kiosk key must name the kiosk it streams as."})
        if self.role != Role.KIOSK and self.kiosk_id is not None:
            raise ValidationError({"kiosk": "Only kiosk-role keys are bound to a kiosk."})

    @classmethod
    def issue(cls, user, name: str, role: str = Role.CLIENT, kiosk=None) -> tuple[ApiKey, str]:
        """Create a key; returns the row and the raw key (which is not stored anywhere)."""
        raw = secrets.token_hex(20)
        key = cls.objects.create(user=user, name=name, role=role, kiosk=kiosk, prefix=raw[:8], key_hash=hash_key(raw))
        return key, raw

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    def revoke(self) -> None:
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            self.save(update_fields=["revoked_at"])

    def allows(self, scope: str | None) -> bool:
        scopes = ROLE_SCOPES.get(self.role, frozenset())
        return "*" in scopes or (scope is not None and scope in scopes)


def person_ids_field(ids) -> str:
    ids = sorted({int(i) for i in ids})
    return "," + ",".join(map(str, ids)) + "," if ids else ""


def people_named_in(result, person_ids: str = "") -> set[int]:
    """Every person id an event carries: ``person_ids`` (",3,17,") and, in ``result``, any
    ``person_id`` value and the ``matched`` list (the fields that hold people's ids)."""
    found = {int(i) for i in person_ids.strip(",").split(",") if i}
    if isinstance(result, dict):
        for key, value in result.items():
            if key == "person_id" and isinstance(value, int) and not isinstance(value, bool):
                found.add(value)
            elif key == "matched" and isinstance(value, list):
                found.update(v for v in value if isinstance(v, int) and not isinstance(v, bool))
            else:
                found |= people_named_in(value)
    elif isinstance(result, list):
        for value in result:
            found |= people_named_in(value)
    return found


def without_people(result, gone: set[int]):
    """``result`` with the people ``gone`` taken out as an erasure takes them out of existing events
    (privacy.services): ``person_id`` set to None, their entries dropped from lists (``matches``
    entries, ``matched`` ids)."""
    if isinstance(result, dict):
        kept = {}
        for key, value in result.items():
            if key == "person_id" and value in gone:
                kept[key] = None
            elif key == "matched" and isinstance(value, list):
                kept[key] = [v for v in value if v not in gone]
            else:
                kept[key] = without_people(value, gone)
        return kept
    if isinstance(result, list):
        return [without_people(v, gone) for v in result if not (isinstance(v, dict) and v.get("person_id") in gone)]
    return result


def existing_people(ids: set[int], using: str) -> set[int]:
    """Which of these person ids still have a Person row, read so that an erasure cannot commit
    between this read and the end of the caller's transaction (see AuditEvent.save).

    The people app sits above this one, so its model is looked up by label, as ApiKey.kiosk names
    "checkin.Kiosk"."""
    if not ids:
        return set()
    person = apps.get_model("people", "Person")
    connection = connections[using]
    if connection.vendor == "postgresql":
        # FOR SHARE waits for a transaction that holds the row FOR NO KEY UPDATE (erase_person,
        # from its start) or is deleting it, then skips the row if it is gone. Other audit writers
        # (FOR SHARE too) and foreign key checks (FOR KEY SHARE: a check-in, an upload) are not
        # held up by it; an edit of the person waits for the INSERT below to commit.
        quote = connection.ops.quote_name
        table, pk = quote(person._meta.db_table), quote(person._meta.pk.column)
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT {pk} FROM {table} WHERE {pk} = ANY(%s) FOR SHARE", [sorted(ids)])
            return {row[0] for row in cursor.fetchall()}
    # SQLite: transactions begin IMMEDIATE (settings.SQLITE_OPTIONS), so the caller's transaction
    # holds the database's write lock from its start and no erasure commits inside it.
    return set(person.objects.using(using).filter(pk__in=ids).values_list("pk", flat=True))


# The rows /ws/identify/ writes (checkin.consumers). ``stream_identify`` is no longer written (a person
# seen but not checked in is not logged) but rows of it written before may remain until they expire.
LIVE_CHECKIN_ACTIONS = ("checkin", "stream", "stream_identify")


class AuditEventQuerySet(models.QuerySet):
    def about(self, person_id: int):
        # LIKE '%,17,%': on PostgreSQL served by the trigram index of migration 0005.
        return self.filter(person_ids__contains=f",{int(person_id)},")

    def naming_people_at_checkin(self):
        """Live check-in rows that name somebody: they expire with the check-ins they document
        (privacy.services.apply_retention), as the check-in notice says."""
        return self.filter(action__in=LIVE_CHECKIN_ACTIONS).exclude(person_ids="")

    def forget_checkin_person(self, checkin_id: int) -> int:
        """Take the person out of the ``checkin`` rows of a check-in rejected as "not this person"
        (checkin.corrections): the row still says a check-in was made there and then, naming nobody
        (the wrong pair is kept, for the check-in period, as the RejectedMatch). Returns the rows changed."""
        changed = 0
        for event in self.filter(action="checkin", result__checkin_id=int(checkin_id)):
            gone = people_named_in(event.result, event.person_ids)
            event.result = {**without_people(event.result, gone), "rejected": True}
            event.person_ids = ""
            event.save(update_fields=["result", "person_ids"])
            changed += 1
        return changed


class AuditEvent(models.Model):
    """One recognition or verification call: who, when, what came out. Never the image."""

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    action = models.CharField(max_length=20, db_index=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    api_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    actor = models.CharField(max_length=200, help_text="The user name and key name at the time of the call.")
    client_address = models.GenericIPAddressField(null=True, blank=True)
    status_code = models.PositiveSmallIntegerField()
    result = models.JSONField(default=dict, help_text="Faces found, matched person ids, similarities, or the error code.")
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    # ",3,17," -- the people matched or compared, so one person's events can be found (export, erasure).
    # Unbounded: a kiosk socket open all day names everybody it saw in its closing "stream" event,
    # and a length cap would either lose that event or drop people from their own data export.
    person_ids = models.TextField(blank=True, editable=False)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.action} by {self.actor}: {self.status_code}"

    def save(self, *args, **kwargs):
        """A new event is written without the people erased by the time it is written.

        Events are often written after the fact (a check-in socket's summary when it closes, hours
        after an erasure that cleaned the log of its person), and privacy.services.erase_person only
        cleans the events that exist while it runs. So every new event is checked here, the one
        place all writers pass through, in one transaction with its INSERT: the Person rows it
        names are read with a lock that an erasure's lock on its person conflicts with, so either
        this commits first (and the erasure, which locks its person before cleaning the log, then
        finds and cleans this event) or the erasure commits first (and its person is dropped here).
        """
        named = people_named_in(self.result, self.person_ids) if self._state.adding else set()
        if not named:
            return super().save(*args, **kwargs)
        using = kwargs.get("using") or router.db_for_write(type(self), instance=self)
        with transaction.atomic(using=using):
            gone = named - existing_people(named, using)
            if gone:
                self.person_ids = person_ids_field(people_named_in(None, self.person_ids) - gone)
                self.result = without_people(self.result, gone)
                if isinstance(self.result, dict):
                    self.result["erased_people"] = self.result.get("erased_people", 0) + len(gone)
            return super().save(*args, **kwargs)
