"""/api/v1/webhooks/: staff register, list, change and remove webhook endpoints."""

from drf_spectacular.utils import extend_schema
from rest_framework import viewsets
from rest_framework.decorators import action
from rest_framework.permissions import IsAdminUser

from facesite.api import WEBHOOK_PERMISSIONS, StaffHoldsPermission
from security.permissions import TokenScope

from .models import Webhook
from .serializers import DeliverySerializer, WebhookSerializer


class WebhookViewSet(viewsets.ModelViewSet):
    """Webhook endpoints. The secret is write-only: it signs deliveries and is never shown again."""

    queryset = Webhook.objects.select_related("created_by")
    serializer_class = WebhookSerializer
    permission_classes = [IsAdminUser, StaffHoldsPermission, TokenScope]
    staff_permissions = WEBHOOK_PERMISSIONS  # recognitions with names leave the site: as in the admin
    token_scope = "webhooks"  # in no limited role's scopes: staff keys only
    lookup_value_regex = r"\d+"

    def perform_create(self, serializer):
        serializer.save(created_by=self.request.user)

    @extend_schema(responses=DeliverySerializer(many=True))
    @action(detail=True, methods=["get"])
    def deliveries(self, request, pk=None):
        """This endpoint's delivery log, newest first: status, attempts, last response code and error."""
        page = self.paginate_queryset(self.get_object().deliveries.order_by("-created_at", "-id"))
        return self.get_paginated_response(DeliverySerializer(page, many=True).data)
