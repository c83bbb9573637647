from django.contrib import admin, messages
from django.utils import timezone

from .models import ApiKey, AuditEvent


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["name", "user", "role", "kiosk", "prefix", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["role", ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "prefix", "user__username", "kiosk__name"]
    readonly_fields = ["prefix", "created_at", "last_used_at"]
    # A kiosk-role key must name its kiosk (ApiKey.clean, run by the admin form).
    fields = ["name", "user", "role", "kiosk", "prefix", "created_at", "last_used_at", "revoked_at"]
    actions = ["revoke"]

    @admin.action(description="Revoke the selected keys")
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
    list_display = ["created_at", "action", "actor", "status_code", "result", "duration_ms", "client_address"]
    list_filter = ["action", "status_code"]
    search_fields = ["actor"]
    date_hierarchy = "created_at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
