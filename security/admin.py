from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.utils import timezone

from .models import ApiKey, AuditEvent, Role


def _plain(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, dict):
        return ", ".join(f"{key} {_plain(item)}" for key, item in value.items())
    if isinstance(value, list):
        return ", ".join(_plain(item) for item in value) or "none"
    return str(value)


def result_summary(result: dict) -> str:
    """An audit result in words: "2 faces; matched person 3 (0.812); threshold 0.550; model 4"."""
    if not isinstance(result, dict) or not result:
        return "-"
    rest = dict(result)
    parts = []
    if "error" in rest:
        parts.append(f"refused: {rest.pop('error')}")
    if "faces" in rest:
        faces = rest.pop("faces")
        parts.append(f"{faces} face{'s' if faces != 1 else ''}" if isinstance(faces, int) else f"faces: {_plain(faces)}")
    if "matches" in rest:
        matches = rest.pop("matches") or []
        named = [f"person {m.get('person_id')} ({_plain(m.get('similarity'))})" for m in matches if isinstance(m, dict)]
        parts.append("matched " + ", ".join(named) if named else "no match")
    if "verified" in rest:
        parts.append("same person" if rest.pop("verified") else "different people")
    if "similarity" in rest:
        parts.append(f"similarity {_plain(rest.pop('similarity'))}")
    if "person_id" in rest:
        parts.append(f"against person {rest.pop('person_id')}")
    parts.extend(f"{key.replace('_', ' ')} {_plain(value)}" for key, value in rest.items() if value is not None)
    return "; ".join(parts)


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["name", "user", "role", "kiosk", "prefix", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["role", ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "prefix", "user__username", "kiosk__name"]
    readonly_fields = ["prefix", "created_at", "last_used_at"]
    # A kiosk-role key must name its kiosk (ApiKey.clean, run by the admin form).
    fields = ["name", "user", "role", "kiosk", "prefix", "created_at", "last_used_at", "revoked_at"]
    actions = ["revoke"]

    # A key acts as its user with its role's share of that user's rights. Only a superuser makes
    # keys for other accounts; anyone else makes them for themselves, with a role within their own
    # rights. A key's user, role and kiosk are fixed once it exists (a new key is issued instead),
    # and a revoked key stays revoked.

    def allowed_roles(self, request) -> list[str]:
        user = request.user
        if user.is_superuser:
            return list(Role.values)
        roles = [Role.CLIENT]
        if user.is_staff:
            roles.insert(0, Role.STAFF)
        if user.has_perm("checkin.change_kiosk"):  # as the kiosk action "Issue an API key" asks
            roles.append(Role.KIOSK)
        return roles

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "user" and not request.user.is_superuser:
            kwargs["queryset"] = get_user_model().objects.filter(pk=request.user.pk)
            kwargs["initial"] = request.user.pk
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def formfield_for_choice_field(self, db_field, request, **kwargs):
        if db_field.name == "role":
            allowed = self.allowed_roles(request)
            kwargs["choices"] = [(value, label) for value, label in Role.choices if value in allowed]
        return super().formfield_for_choice_field(db_field, request, **kwargs)

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None:
            fields += ["user", "role", "kiosk"]
            if obj.revoked_at is not None:
                fields.append("revoked_at")
        return fields

    @admin.action(description="Revoke the selected keys", permissions=["change"])
    def revoke(self, request, queryset):
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"Revoked {count} key(s).")

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        key, raw = ApiKey.issue(obj.user, obj.name, obj.role, kiosk=obj.kiosk)
        obj.pk, obj.prefix, obj.key_hash = key.pk, key.prefix, key.key_hash
        # The only time the key is shown: it is stored as a hash.
        self.message_user(request, f"New key for {key.name}: {raw}  (copy it now; it is not shown again)", messages.WARNING)


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ["created_at", "action", "actor", "status_code", "result_label", "duration", "client_address"]
    list_filter = ["action", "status_code"]
    search_fields = ["actor"]
    date_hierarchy = "created_at"
    readonly_fields = ["result_label"]

    @admin.display(description="Result")
    def result_label(self, obj):
        return result_summary(obj.result)

    @admin.display(description="Duration", ordering="duration_ms")
    def duration(self, obj):
        return "-" if obj.duration_ms is None else f"{obj.duration_ms:,} ms"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
