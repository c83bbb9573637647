"""API keys with a role, and the audit log of recognition and verification calls."""

from __future__ import annotations

import hashlib
import secrets

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
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


class AuditEventQuerySet(models.QuerySet):
    def about(self, person_id: int):
        return self.filter(person_ids__contains=f",{int(person_id)},")


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
    person_ids = models.CharField(max_length=1000, blank=True, editable=False)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.action} by {self.actor}: {self.status_code}"
