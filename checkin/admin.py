"""Staff views of kiosks, consents and check-ins (today's check-ins first)."""

from django.contrib import admin, messages
from django.utils import timezone

from integrations.events import checkin_rejected

from .models import CheckIn, Consent, Kiosk


@admin.register(Kiosk)
class KioskAdmin(admin.ModelAdmin):
    list_display = ["name", "token_prefix", "is_active", "liveness_required", "last_seen_at", "created_at"]
    list_filter = ["is_active", "liveness_required"]
    readonly_fields = ["token_prefix", "created_by", "created_at", "last_seen_at"]
    actions = ["issue_new_token", "issue_api_key"]

    def save_model(self, request, obj, form, change):
        token = None
        if not change:
            obj.created_by = request.user
            token = obj.set_new_token()
        super().save_model(request, obj, form, change)
        if token:
            self._show_token(request, obj, token)

    @admin.action(description="Issue a new token (the old one stops working)")
    def issue_new_token(self, request, queryset):
        for kiosk in queryset:
            token = kiosk.set_new_token()
            kiosk.save(update_fields=["token_hash", "token_prefix"])
            self._show_token(request, kiosk, token)

    @admin.action(description="Issue an API key for this kiosk (a non-browser device streaming as it)")
    def issue_api_key(self, request, queryset):
        from security.models import ApiKey, Role

        for kiosk in queryset:
            key, raw = ApiKey.issue(request.user, f"kiosk {kiosk.name}", Role.KIOSK, kiosk=kiosk)
            messages.warning(
                request,
                f"API key for kiosk “{kiosk.name}”: {raw} — send it as 'Authorization: Token <key>' on "
                "/ws/identify/. It is not stored and will not be shown again (revoke it under API keys).",
            )

    def _show_token(self, request, kiosk, token):
        messages.warning(
            request,
            f"Token for kiosk “{kiosk.name}”: {token} — enter it once on the kiosk at /checkin/. "
            "It is not stored and will not be shown again.",
        )


@admin.register(Consent)
class ConsentAdmin(admin.ModelAdmin):
    list_display = ["given_at", "purpose", "user", "kiosk", "notice_version", "age_confirmed", "withdrawn_at"]
    list_filter = ["purpose", "notice_version", "given_at"]
    date_hierarchy = "given_at"

    def has_add_permission(self, request):
        return False  # consent is given by the person on the page, never entered by staff

    def has_change_permission(self, request, obj=None):
        return False


class TodayFilter(admin.SimpleListFilter):
    title = "when"
    parameter_name = "when"

    def lookups(self, request, model_admin):
        return [("today", "Today"), ("all", "All")]

    def choices(self, changelist):
        # "Today" is the default: show it selected when no choice was made.
        for lookup, title in self.lookup_choices:
            yield {
                "selected": (self.value() or "today") == lookup,
                "query_string": changelist.get_query_string({self.parameter_name: lookup}),
                "display": title,
            }

    def queryset(self, request, queryset):
        return queryset if self.value() == "all" else queryset.today()


@admin.register(CheckIn)
class CheckInAdmin(admin.ModelAdmin):
    list_display = ["local_time", "person", "similarity_label", "frames", "device", "model_version", "liveness_checked"]
    list_filter = [TodayFilter, "kiosk", "liveness_checked"]
    list_select_related = ["person", "kiosk", "user", "model_version"]
    search_fields = ["person__name"]
    date_hierarchy = "checked_in_at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def delete_model(self, request, obj):
        checkin_rejected(obj, by=request.user)
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        for checkin in queryset.select_related("person", "kiosk", "model_version"):
            checkin_rejected(checkin, by=request.user)
        super().delete_queryset(request, queryset)

    @admin.display(description="Checked in", ordering="checked_in_at")
    def local_time(self, obj):
        return timezone.localtime(obj.checked_in_at).strftime("%Y-%m-%d %H:%M:%S")

    @admin.display(description="Similarity", ordering="similarity")
    def similarity_label(self, obj):
        return "-" if obj.similarity is None else f"{obj.similarity:.3f}"
