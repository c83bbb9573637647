from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path
from django.views.generic import RedirectView

from checkin import dashboard, pages
from facesite.health import healthz
from facesite.home import home
from people.media import FaceMediaView
from privacy.views import PersonExportView, VisitorExportView

urlpatterns = [
    path("", home, name="home"),
    # The check-in models' admin pages before the check-in app was split out of recognition.
    re_path(
        r"^admin/recognition/(?P<rest>(?:kiosk|consent|checkin)/.*)$",
        RedirectView.as_view(url="/admin/checkin/%(rest)s", query_string=True),
    ),
    path("admin/dashboard/", dashboard.dashboard, name="admin-dashboard"),
    path("admin/", admin.site.urls),
    path("healthz/", healthz, name="healthz"),
    path("api/v1/people/<int:pk>/export/", PersonExportView.as_view(), name="person-export"),
    path("api/v1/visitors/<int:pk>/export/", VisitorExportView.as_view(), name="visitor-export"),
    # Face photos are served to staff by these views only: no /media/ route, in any DEBUG mode.
    path("api/v1/people/<int:person_pk>/faces/<int:pk>/image/", FaceMediaView.as_view(kind="image"), name="face-image"),
    path("api/v1/people/<int:person_pk>/faces/<int:pk>/crop/", FaceMediaView.as_view(kind="crop"), name="face-crop"),
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
