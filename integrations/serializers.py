from django.core.validators import URLValidator
from rest_framework import serializers

from .models import EVENTS, Delivery, Webhook
from .webhooks import UnsafeUrl, resolve


class WebhookSerializer(serializers.ModelSerializer):
    url = serializers.CharField(max_length=500, validators=[URLValidator(schemes=["http", "https"])])
    events = serializers.ListField(child=serializers.CharField(max_length=40), allow_empty=False, max_length=len(EVENTS))
    secret = serializers.CharField(write_only=True, min_length=16, max_length=200, trim_whitespace=False)
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = Webhook
        fields = ["id", "url", "events", "secret", "description", "is_active", "created_by", "created_at"]
        read_only_fields = ["id", "created_by", "created_at"]

    def validate_url(self, value: str) -> str:
        """Every address the host resolves to must be public (unless WEBHOOK_ALLOW_PRIVATE)."""
        try:
            resolve(value)
        except UnsafeUrl as err:
            raise serializers.ValidationError(str(err)) from None
        return value

    def validate_events(self, value: list[str]) -> list[str]:
        unknown = [name for name in value if name not in EVENTS]
        if unknown:
            raise serializers.ValidationError(f"Unknown event {unknown[0]!r}; known events: {', '.join(EVENTS)}.")
        return list(dict.fromkeys(value))


class DeliverySerializer(serializers.ModelSerializer):
    class Meta:
        model = Delivery
        fields = ["delivery_id", "event", "status", "attempts", "response_code", "last_error", "created_at", "delivered_at"]
