"""Staff manage webhook endpoints and read their delivery log (send a test event, retry a delivery)."""

from django import forms
from django.contrib import admin, messages
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from . import events
from .models import EVENTS, Delivery, Webhook
from .webhooks import UnsafeUrl, resolve


class WebhookForm(forms.ModelForm):
    url = forms.URLField(max_length=500, assume_scheme="https", help_text=Webhook._meta.get_field("url").help_text)
    events = forms.MultipleChoiceField(choices=[(name, name) for name in EVENTS], widget=forms.CheckboxSelectMultiple)
    secret = forms.CharField(
        required=False,
        min_length=16,
        max_length=200,
        strip=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="At least 16 characters. Leave empty to keep the current secret.",
    )

    class Meta:
        model = Webhook
        fields = ["url", "events", "secret", "description", "is_active"]

    def clean_url(self):
        url = self.cleaned_data["url"]
        try:
            resolve(url)
        except UnsafeUrl as err:
            raise forms.ValidationError(str(err)) from None
        return url

    def clean_secret(self):
        secret = self.cleaned_data.get("secret")
        if secret:
            return secret
        if self.instance.pk:
            return self.instance.secret
        raise forms.ValidationError("A new webhook needs a secret.")


@admin.register(Webhook)
class WebhookAdmin(admin.ModelAdmin):
    form = WebhookForm
    list_display = ["url", "events", "is_active", "created_by", "created_at"]
    list_filter = ["is_active"]
    readonly_fields = ["created_by", "created_at", "recent_deliveries"]
    actions = ["send_test_event"]

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)

    @admin.display(description="Recent deliveries")
    def recent_deliveries(self, obj):
        if not obj.pk:
            return "-"
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (d.created_at, d.event, d.get_status_display(), d.attempts, d.response_code or "-", d.last_error or "")
                for d in obj.deliveries.order_by("-created_at", "-id")[:20]
            ),
        )
        link = reverse("admin:integrations_delivery_changelist") + f"?webhook__id__exact={obj.pk}"
        return format_html(
            "<table><tr><th>When</th><th>Event</th><th>Status</th><th>Attempts</th><th>Code</th><th>Error</th></tr>{}</table>"
            '<p><a href="{}">All deliveries to this endpoint</a></p>',
            rows,
            link,
        )

    @admin.action(description="Send a test event", permissions=["change"])
    def send_test_event(self, request, queryset):
        for webhook in queryset:
            delivery = events.send_test(webhook)
            delivery.refresh_from_db()
            messages.info(request, f"Test event to {webhook.url}: {delivery.get_status_display().lower()}.")


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = ["created_at", "event", "webhook", "status", "attempts", "response_code", "next_attempt_at", "delivered_at"]
    list_filter = ["status", "event", "webhook"]
    readonly_fields = [f.name for f in Delivery._meta.fields]
    actions = ["retry"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_retry_permission(self, request) -> bool:
        # Deliveries are a read-only log; resending one is work done for its webhook.
        return request.user.has_perm("integrations.change_webhook")

    @admin.action(description="Retry now", permissions=["retry"])
    def retry(self, request, queryset):
        for delivery in queryset:
            events.retry(delivery)
        messages.info(request, f"{queryset.count()} deliveries queued again.")
