"""Staff views of kiosks, consents and check-ins (today's check-ins first), rejected matches and
the outlier review of the gallery."""

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from integrations.events import checkin_rejected
from people import services as people_services
from people.admin import crop_thumbnail
from people.models import FaceImage, Person

from . import corrections, outlier_scan
from .models import CheckIn, Consent, Kiosk, OutlierFace, RejectedMatch


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

    @admin.action(description="Issue a new token (the old one stops working)", permissions=["change"])
    def issue_new_token(self, request, queryset):
        for kiosk in queryset:
            token = kiosk.set_new_token()
            kiosk.save(update_fields=["token_hash", "token_prefix"])
            self._show_token(request, kiosk, token)

    def has_issue_api_key_permission(self, request) -> bool:
        # The key acts as the kiosk, so it takes changing kiosks and making API keys.
        return self.has_change_permission(request) and request.user.has_perm("security.add_apikey")

    @admin.action(
        description="Issue an API key for this kiosk (a non-browser device streaming as it)", permissions=["issue_api_key"]
    )
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
    actions = ["not_this_person"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.action(description="Not this person: remove the check-in and record the wrong match", permissions=["delete"])
    def not_this_person(self, request, queryset):
        rejected = 0
        for pk in list(queryset.values_list("pk", flat=True)):
            try:
                rejection = corrections.reject_checkin(pk, by=request.user)
            except corrections.NotRejectable as err:
                messages.error(request, f"Check-in {pk}: {err.message}")
                continue
            rejected += 1
            if rejection.flagged:
                person = rejection.match.person
                url = reverse("admin:checkin_outlierface_person", args=[person.pk])
                messages.warning(
                    request,
                    format_html(
                        '{} of the faces behind the wrong match look out of place in {}\'s gallery: <a href="{}">review them</a>.',
                        len(rejection.flagged),
                        person.name,
                        url,
                    ),
                )
        if rejected:
            messages.success(request, f"{rejected} check-in(s) removed and recorded as wrong matches.")

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


@admin.register(RejectedMatch)
class RejectedMatchAdmin(admin.ModelAdmin):
    list_display = ["rejected_at", "person", "checked_in_at", "similarity", "kiosk", "device", "rejected_by", "review_link"]
    list_filter = ["kiosk", "rejected_at"]
    list_select_related = ["person", "kiosk", "rejected_by"]
    search_fields = ["person__name"]
    date_hierarchy = "rejected_at"
    readonly_fields = [f.name for f in RejectedMatch._meta.fields] + ["faces"]

    def has_add_permission(self, request):
        return False  # made by rejecting a check-in

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="Outlier review")
    def review_link(self, obj):
        return format_html(
            '<a href="{}">{}\u2019s faces</a>', reverse("admin:checkin_outlierface_person", args=[obj.person_id]), obj.person
        )


@admin.register(OutlierFace)
class OutlierFaceAdmin(admin.ModelAdmin):
    """The outlier review: its list is the outlier faces of the gallery as the newest site-wide scan
    (a background task, checkin.outlier_scan) found them, paginated, with a button to scan again;
    a person's page judges their faces in the request and also lists their rejected matches. Staff
    remove a face here through the usual face deletion (files, gallery, retrain)."""

    def has_view_permission(self, request, obj=None):
        return request.user.has_perm("people.view_faceimage")

    def has_module_permission(self, request):
        return self.has_view_permission(request)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_urls(self):
        view = self.admin_site.admin_view(self.person_review)
        return [path("person/<int:person_id>/", view, name="checkin_outlierface_person")] + super().get_urls()

    def changelist_view(self, request, extra_context=None):
        if not self.has_view_permission(request):
            raise PermissionDenied
        if request.method == "POST":
            if "scan" in request.POST:
                return self._request_scan(request)
            return self._remove_face(request, None)
        # What the newest finished site-wide scan stored (the scan runs in a background task).
        scan = outlier_scan.latest()
        page = Paginator(outlier_scan.flagged_faces(scan), self.list_per_page).get_page(request.GET.get("p"))
        context = {
            **self.admin_site.each_context(request),
            "title": "Outlier face review",
            "reviews": corrections.site_review(page.object_list),
            "page_obj": page,
            "scan": scan,
            "running": outlier_scan.running(),
            "person": None,
            "can_remove": request.user.has_perm("people.delete_faceimage"),
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/checkin/outlier_review.html", self._with_faces(context))

    def _request_scan(self, request):
        """POST scan: queue a new site-wide scan (the review's own permission, as for viewing it)."""
        try:
            outlier_scan.request_scan(by=request.user)
        except outlier_scan.ScanRunning:
            messages.warning(request, "A scan is already running: its result will be shown here once it finishes.")
        else:
            messages.success(request, "A new scan of the whole gallery was queued; reload this page to see it once it finishes.")
        return HttpResponseRedirect(request.path)

    def person_review(self, request, person_id: int):
        if not self.has_view_permission(request):
            raise PermissionDenied
        person = get_object_or_404(Person, pk=person_id)
        if request.method == "POST":
            return self._remove_face(request, person)
        review = corrections.review(person)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Outlier review: {person.name}",
            "reviews": review.faces,
            "rejections": review.rejections,
            "bound": review.bound,
            "person": person,
            "can_remove": request.user.has_perm("people.delete_faceimage"),
        }
        return TemplateResponse(request, "admin/checkin/outlier_review.html", self._with_faces(context))

    def _with_faces(self, context: dict) -> dict:
        ids = [r.evidence.face_id for r in context["reviews"]]
        faces = FaceImage.objects.in_bulk(ids)
        people = dict(Person.objects.filter(pk__in={r.evidence.person_id for r in context["reviews"]}).values_list("id", "name"))
        context["rows"] = [
            {
                "review": r,
                "face": faces.get(r.evidence.face_id),
                "thumbnail": crop_thumbnail(faces[r.evidence.face_id]) if r.evidence.face_id in faces else "-",
                "person_name": people.get(r.evidence.person_id, ""),
                "rejected": format_html_join(
                    ", ",
                    "{} ({})",
                    ((timezone.localtime(m.checked_in_at).strftime("%Y-%m-%d %H:%M"), m.device) for m in r.rejections),
                ),
            }
            for r in context["reviews"]
        ]
        return context

    def _remove_face(self, request, person):
        """POST remove_face=<id>: delete that gallery face (people.services.delete_face)."""
        if not request.user.has_perm("people.delete_faceimage"):
            raise PermissionDenied
        wanted = request.POST.get("remove_face", "")
        faces = FaceImage.objects.filter(pk=int(wanted)) if wanted.isascii() and wanted.isdigit() else FaceImage.objects.none()
        if person is not None:
            faces = faces.filter(person=person)
        face = faces.select_related("person").first()
        if face is None:
            messages.error(request, "That face is not in the gallery any more.")
        else:
            removed = face.pk
            people_services.delete_face(face)
            messages.success(request, f"Face {removed} removed from {face.person.name}'s gallery.")
        return HttpResponseRedirect(request.path)
