from django.conf import settings
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from django.views.generic import RedirectView

from facesite.health import healthz
from privacy.views import PersonExportView
from recognition import pages

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("admin/", admin.site.urls),
    path("healthz/", healthz, name="healthz"),
    path("api/v1/people/<int:pk>/export/", PersonExportView.as_view(), name="person-export"),
    path("api/v1/", include("facesite.api_urls")),
    path("checkin/", pages.checkin, name="checkin"),
    path("checkin/feed/", pages.checkin_feed, name="checkin-feed"),
    path("checkin/kiosk/", pages.kiosk_sign_in, name="kiosk-sign-in"),
    path("checkin/kiosk/leave/", pages.kiosk_sign_out, name="kiosk-sign-out"),
    path("verify/", pages.verify, name="verify-page"),
    path("verify/consent/", pages.verify_consent, name="verify-consent"),
    path("accounts/login/", auth_views.LoginView.as_view(next_page="checkin"), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(next_page="login"), name="logout"),
]

if settings.DEBUG:
    from django.conf.urls.static import static

    urlpatterns += static(settings.MEDIA_URL, document_root=settings.MEDIA_ROOT)
