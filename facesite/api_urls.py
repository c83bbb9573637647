"""/api/v1/ routes."""

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import DefaultRouter

from checkin.api import AttendanceReportView, CheckInListView
from checkin.corrections_api import OutliersView, PersonOutliersView, RejectCheckInView
from checkin.edge_api import EdgeGalleryView, EdgeManifestView
from integrations.views import WebhookViewSet
from people.views import FaceImageViewSet, PersonViewSet
from recognition.views import ObtainTokenView, RecognizeView, VerifyView
from training.views import ModelVersionViewSet
from visitors.api import VisitorCropView, VisitorViewSet

router = DefaultRouter()
router.register("people", PersonViewSet, basename="person")
router.register("models", ModelVersionViewSet, basename="model")
router.register("webhooks", WebhookViewSet, basename="webhook")
router.register("visitors", VisitorViewSet, basename="visitor")

face_list = FaceImageViewSet.as_view({"get": "list", "post": "create"})
face_detail = FaceImageViewSet.as_view({"get": "retrieve", "delete": "destroy"})

urlpatterns = [
    path("auth/token/", ObtainTokenView.as_view(), name="api-token"),
    path("recognize/", RecognizeView.as_view(), name="recognize"),
    path("verify/", VerifyView.as_view(), name="verify"),
    path("checkins/", CheckInListView.as_view(), name="checkins"),
    path("checkins/<int:pk>/reject/", RejectCheckInView.as_view(), name="checkin-reject"),
    path("outliers/", OutliersView.as_view(), name="outliers"),
    path("people/<int:pk>/outliers/", PersonOutliersView.as_view(), name="person-outliers"),
    path("reports/attendance/", AttendanceReportView.as_view(), name="attendance-report"),
    path("edge/manifest/", EdgeManifestView.as_view(), name="edge-manifest"),
    path("edge/gallery/", EdgeGalleryView.as_view(), name="edge-gallery"),
    path("people/<int:person_pk>/faces/", face_list, name="person-faces"),
    path("people/<int:person_pk>/faces/<int:pk>/", face_detail, name="person-face-detail"),
    path("visitors/<int:pk>/crop/", VisitorCropView.as_view(), name="visitor-crop"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("", include(router.urls)),
]
