from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.core.files.base import ContentFile
from django.db import IntegrityError, transaction
from django.db.models import Count, Q
from django.http import Http404, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from privacy.services import erase_person
from privacy.views import zip_response
from recognition.engine.images import ImageError

from . import services
from .forms import PersonAdminForm
from .media import face_media_url
from .models import FaceImage, Person

STATUS_COLOURS = {"accepted": "#1a7f37", "rejected": "#cf222e", "review": "#9a6700", "pending": "#57606a"}

# The admin's app sidebar takes a quarter of a 1280 px screen beside every list, which then scrolls
# sideways (photos, check-ins, audit events); the home page and breadcrumbs lead to each list.
admin.site.enable_nav_sidebar = False


def crop_thumbnail(face: FaceImage, size: int = 80) -> str:
    # Through the staff-only media view (people/media.py): there is no public /media/ route.
    if face.crop:
        return format_html(
            '<img src="{}" width="{}" height="{}" alt="face crop" style="border-radius:4px">',
            face_media_url(face, "crop"),
            size,
            size,
        )
    if face.image:
        return format_html('<img src="{}" height="{}" alt="photo" style="opacity:.6">', face_media_url(face, "image"), size)
    return "-"


def reprocess_faces(request, faces) -> None:
    """Queue the faces whose original photo is on file; the others (imported embeddings, photos
    deleted by retention) have nothing to re-read and keep their embeddings."""
    ids = list(faces.exclude(image="").values_list("id", flat=True))
    for pk in ids:
        services.queue_processing(pk)
    messages.info(request, f"{len(ids)} photo(s) queued for re-processing.")
    skipped = faces.filter(image="").count()
    if skipped:
        messages.warning(request, f"{skipped} face(s) have no original photo on file and were left as they are.")


def photo_size(face: FaceImage) -> tuple[int, int]:
    """The photo's (width, height) as detection saw it: after its EXIF rotation."""
    from PIL import Image

    with face.image.open("rb") as fh, Image.open(fh) as image:
        width, height = image.size
        if image.getexif().get(0x0112) in (5, 6, 7, 8):  # rotated a quarter turn
            width, height = height, width
    return width, height


def status_badge(face: FaceImage) -> str:
    return format_html('<strong style="color:{}">{}</strong>', STATUS_COLOURS.get(face.status, "#000"), face.get_status_display())


def short_reason(face: FaceImage, length: int = 60) -> str:
    """The reason on one or two lines of a list; the whole text in the tooltip."""
    reason = face.reason or ""
    if len(reason) <= length:
        return reason or "-"
    return format_html('<span title="{}">{}…</span>', reason, reason[: length - 1].rstrip())


def face_taken(face: FaceImage) -> str:
    """Which face of a photo of several was taken and why, as enrollment recorded it."""
    return f"Face taken: {face.face_choice_reason}." if face.face_choice_reason else ""


def reason_or_face_taken(face: FaceImage, short: bool = True) -> str:
    """The photo's reason (rejected, held for review; ``short``: one or two lines of a list) or,
    for an accepted photo of several faces, which face was taken and why."""
    if face.reason or not face.face_choice_reason:
        return short_reason(face) if short else (face.reason or "-")
    return face_taken(face)


def rounded(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


class FaceImageInline(admin.TabularInline):
    model = FaceImage
    extra = 0
    fields = [
        "thumbnail",
        "status_label",
        "reason_label",
        "review_action",
        "score",
        "sharpness_label",
        "original_name",
        "created_at",
    ]
    readonly_fields = fields
    can_delete = True
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False  # photos are added with the "Add photos" field (several at once)

    @admin.display(description="Face")
    def thumbnail(self, obj):
        return crop_thumbnail(obj)

    @admin.display(description="Status")
    def status_label(self, obj):
        return status_badge(obj)

    @admin.display(description="Reason")
    def reason_label(self, obj):
        return reason_or_face_taken(obj, short=False)  # the person's page shows the whole reason

    @admin.display(description="Detection score")
    def score(self, obj):
        return rounded(obj.detection_score, 3)

    @admin.display(description="Sharpness")
    def sharpness_label(self, obj):
        return rounded(obj.sharpness, 1)

    @admin.display(description="Review")
    def review_action(self, obj):
        # Submits the person's form (saving it, like "Save and continue") with the photo to approve:
        # PersonAdmin.response_change approves it. A form of its own cannot nest in the change form.
        if obj.faces_found and obj.status == FaceImage.Status.REJECTED and obj.image:
            url = reverse("admin:people_faceimage_choose_face", args=[obj.pk])
            return format_html('<a class="button" href="{}">Choose the face</a>', url)
        if obj.status != FaceImage.Status.REVIEW:
            return ""
        return format_html('<button type="submit" class="button" name="_approve_face" value="{}">Approve</button>', obj.pk)


class PhotosOfFailedRequestsDeleted:
    """The admin saves a form in one transaction, and writes photos inside it (people/services.py
    ``photo_stored``). A request that fails after writing some (a later photo, the inline formset,
    the commit, a person erased meanwhile) deletes them at once rather than leaving them to the
    daily retention's sweep of uncommitted photos."""

    def changeform_view(self, request, *args, **kwargs):
        request.photos_stored = []
        try:
            return super().changeform_view(request, *args, **kwargs)
        except services.PersonGone as err:
            services.discard_uncommitted_photos(request.photos_stored)
            raise Http404("This person was erased meanwhile; nothing was saved.") from err
        except BaseException:
            services.discard_uncommitted_photos(request.photos_stored)  # those of committed rows are kept
            raise


def note_photo_stored(request, face: FaceImage) -> None:
    if face.image and hasattr(request, "photos_stored"):
        request.photos_stored.append(face.image.name)


class ExternalIdTaken(Exception):
    """Another request stored this external_id between the form's unique check and this save."""


class HasRejectedFilter(admin.SimpleListFilter):
    title = "photos"
    parameter_name = "photos"

    def lookups(self, request, model_admin):
        return [("none", "No accepted photo"), ("review", "Has photos to review"), ("rejected", "Has rejected photos")]

    def queryset(self, request, queryset):
        if self.value() == "none":
            return queryset.exclude(faces__status=FaceImage.Status.ACCEPTED)
        if self.value() == "review":
            return queryset.filter(faces__status=FaceImage.Status.REVIEW).distinct()
        if self.value() == "rejected":
            return queryset.filter(faces__status=FaceImage.Status.REJECTED).distinct()
        return queryset


@admin.register(Person)
class PersonAdmin(PhotosOfFailedRequestsDeleted, admin.ModelAdmin):
    form = PersonAdminForm
    list_display = [
        "name",
        "external_id",
        "is_active",
        "legal_basis_label",
        "accepted_count",
        "review_count",
        "rejected_count",
        "updated_at",
    ]
    list_filter = ["is_active", "legal_basis", HasRejectedFilter, "created_at"]
    search_fields = ["name", "external_id", "notes"]
    fields = ["name", "external_id", "notes", "is_active", "legal_basis", "legal_basis_record", "outlier_review", "new_photos"]
    readonly_fields = ["legal_basis_record", "outlier_review"]
    inlines = [FaceImageInline]
    actions = ["reprocess_photos", "export_data"]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                n_accepted=Count("faces", filter=Q(faces__status=FaceImage.Status.ACCEPTED)),
                n_review=Count("faces", filter=Q(faces__status=FaceImage.Status.REVIEW)),
                n_rejected=Count("faces", filter=Q(faces__status=FaceImage.Status.REJECTED)),
            )
        )

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)
        # Nobody is enrolled without a legal basis; people enrolled before it was recorded can still
        # be edited (and given one) without it.
        form.base_fields["legal_basis"].required = obj is None
        return form

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except ExternalIdTaken:
            pass
        # The whole request rolled back (the admin saves a form in one transaction): answered again,
        # the form's unique check sees the other person and says so on the field, with the staff
        # member's input kept. Only a third request racing again in between is told in a message.
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except ExternalIdTaken:
            messages.error(request, "Another person was just saved with this external id; nothing was saved.")
            return HttpResponseRedirect(request.get_full_path())

    def save_model(self, request, obj, form, change):
        # Locked first so that an erasure waits for this request (and its photos); one that came
        # first leaves nothing to save: saving would insert the erased person again.
        if change and not services.lock_person(obj.pk):
            raise services.PersonGone(f"person {obj.pk} no longer exists")
        if "legal_basis" in form.changed_data and obj.legal_basis:
            obj.record_legal_basis(obj.legal_basis, by=request.user)
        # The form's unique check ran before this write: another request (two staff typing one
        # badge number, an HR sync) may have stored the same external_id in between.
        try:
            with transaction.atomic():
                super().save_model(request, obj, form, change)
        except IntegrityError:
            taken = Person.objects.filter(external_id=obj.external_id).exclude(pk=obj.pk)
            if obj.external_id is None or not taken.exists():
                raise
            raise ExternalIdTaken(obj.external_id) from None

    @admin.display(description="Legal basis", ordering="legal_basis")
    def legal_basis_label(self, obj):
        return obj.get_legal_basis_display() if obj.legal_basis else "Not recorded"

    @admin.display(description="Recorded")
    def legal_basis_record(self, obj):
        if obj is None or not obj.legal_basis:
            return "Not recorded"
        by = obj.consent_recorded_by.get_username() if obj.consent_recorded_by else "an import or a deleted user"
        when = obj.consent_recorded_at.strftime("%Y-%m-%d %H:%M %Z") if obj.consent_recorded_at else "an unknown time"
        return f"{when} by {by}, consent notice {obj.consent_notice_version or '(none)'}"

    @admin.display(description="Outlier review")
    def outlier_review(self, obj):
        # the check-in app's review (faces that may not be this person's, rejected check-ins)
        if obj is None or obj.pk is None:
            return "-"
        return format_html(
            '<a href="{}">Faces that may not be theirs, and check-ins rejected as not them</a>',
            reverse("admin:checkin_outlierface_person", args=[obj.pk]),
        )

    @admin.display(description="Accepted", ordering="n_accepted")
    def accepted_count(self, obj):
        return obj.n_accepted

    @admin.display(description="To review", ordering="n_review")
    def review_count(self, obj):
        return obj.n_review

    @admin.display(description="Rejected", ordering="n_rejected")
    def rejected_count(self, obj):
        return obj.n_rejected

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        added, refused = 0, []
        for upload in form.cleaned_data.get("new_photos") or []:
            try:
                note_photo_stored(request, services.enroll(form.instance, upload, uploaded_by=request.user))
                added += 1
            except ImageError as err:
                refused.append(f"{upload.name}: {err.message}")
        if added:
            messages.info(request, f"{added} photo(s) added; each is checked and embedded in the background.")
        for line in refused:
            messages.error(request, f"Not stored: {line}")

    def response_change(self, request, obj):
        face_pk = request.POST.get("_approve_face")
        if face_pk is None:
            return super().response_change(request, obj)
        face = obj.faces.filter(
            pk=face_pk if face_pk.isascii() and face_pk.isdigit() else None, status=FaceImage.Status.REVIEW
        ).first()
        if face is None:
            messages.error(request, "That photo is not held for review any more.")
        else:
            services.approve(face)
            messages.success(request, f"Photo {face.original_name or face.pk} approved: it joins {obj.name}'s gallery.")
        return HttpResponseRedirect(request.path)

    def delete_model(self, request, obj):
        erase_person(obj, by=request.user)  # everywhere they are held

    def delete_queryset(self, request, queryset):  # the "delete selected" action too
        for person in queryset:
            erase_person(person, by=request.user)

    def save_formset(self, request, form, formset, change):
        # photos deleted in the inline go through the service (files, gallery, retrain)
        instances = formset.save(commit=False)
        for face in formset.deleted_objects:
            services.delete_face(face)
        for instance in instances:
            instance.save()
        formset.save_m2m()

    @admin.action(description="Re-process the photos of the selected people", permissions=["change"])
    def reprocess_photos(self, request, queryset):
        reprocess_faces(request, FaceImage.objects.filter(person__in=queryset))

    def has_export_permission(self, request) -> bool:
        # A person's whole record (photos, crops, embeddings, recognitions) leaves the site: its own
        # permission, not implied by editing a name or reading the list.
        return request.user.has_perm("people.export_person")

    @admin.action(description="Export all data held about the selected person (zip)", permissions=["export"])
    def export_data(self, request, queryset):
        if queryset.count() != 1:
            messages.error(request, "Select exactly one person to export.")
            return None
        return zip_response(queryset.get())


@admin.register(FaceImage)
class FaceImageAdmin(PhotosOfFailedRequestsDeleted, admin.ModelAdmin):
    # The embedder is the same on nearly every row (it is a filter and on each photo's page): its
    # column pushed the list past 1280 px.
    list_display = ["thumbnail", "person", "status_label", "reason_label", "score", "sharpness_label", "created_at"]
    list_display_links = ["thumbnail", "person"]
    list_filter = ["status", "reason_code", "embedder", "created_at"]
    search_fields = ["person__name", "person__external_id", "original_name", "reason"]
    list_select_related = ["person"]
    readonly_fields = [
        "preview",
        "status",
        "reason_code",
        "reason",
        "faces_to_choose",
        "box",
        "landmarks",
        "detection_score",
        "sharpness",
        "embedder",
        "original_name",
        "uploaded_by",
        "created_at",
        "processed_at",
    ]
    fields = ["person", "image", *readonly_fields]
    actions = ["reprocess", "approve"]

    def get_urls(self):
        choose = self.admin_site.admin_view(self.choose_face_view)
        return [path("<int:pk>/choose-face/", choose, name="people_faceimage_choose_face"), *super().get_urls()]

    def choose_face_view(self, request, pk: int):
        """A photo of several faces, numbered on the photo; staff pick the person's, and the photo is
        processed again with that face (the same checks as any upload: quality, mislabel)."""
        face = get_object_or_404(FaceImage.objects.select_related("person"), pk=pk)
        if not self.has_change_permission(request, face):
            raise PermissionDenied
        if not face.faces_found or not face.image:
            raise Http404("This photo lists no faces to choose from.")
        if request.method == "POST":
            index = request.POST.get("face_index", "")
            try:
                services.choose_face(face, int(index) if index.isascii() and index.isdigit() else -1)
            except ValueError as err:
                messages.error(request, f"Not chosen: {err}")
                return HttpResponseRedirect(request.path)
            messages.success(request, f"Face #{index} chosen as {face.person.name}'s; the photo is processed again with it.")
            return HttpResponseRedirect(reverse("admin:people_faceimage_change", args=[face.pk]))
        context = {
            **self.admin_site.each_context(request),
            "title": f"Choose {face.person.name}'s face",
            "opts": self.model._meta,
            "original": face,
            "photo_url": face_media_url(face, "image"),
            "photo_size": photo_size(face),
            "faces": [{"index": i, "x": b[0], "y": b[1], "w": b[2], "h": b[3]} for i, b in enumerate(face.faces_found)],
            "chosen": face.chosen_box,
        }
        return TemplateResponse(request, "admin/people/faceimage/choose_face.html", context)

    @admin.display(description="Faces found")
    def faces_to_choose(self, obj):
        if not obj or not obj.faces_found:
            return "-"
        url = reverse("admin:people_faceimage_choose_face", args=[obj.pk])
        chosen = f" ({obj.get_face_choice_display().lower()})" if obj.face_choice else ""
        taken = format_html("<br>{}", face_taken(obj)) if obj.face_choice_reason else ""
        return format_html(
            '{} faces{} — <a class="button" href="{}">Choose the person\'s face</a>{}', len(obj.faces_found), chosen, url, taken
        )

    def get_fields(self, request, obj=None):
        # A stored photo is shown through the staff-only media view (there is no /media/ route);
        # the file input, whose "Currently:" link would point there, is only on the add form.
        fields = super().get_fields(request, obj)
        return [("photo" if f == "image" else f) for f in fields] if obj else fields

    def get_readonly_fields(self, request, obj=None):
        return [*self.readonly_fields, "photo"] if obj else self.readonly_fields

    @admin.display(description="Photo")
    def photo(self, obj):
        url = face_media_url(obj, "image")
        return format_html('<a href="{}">{}</a>', url, obj.original_name or "photo") if url else "-"

    @admin.display(description="Face")
    def thumbnail(self, obj):
        return crop_thumbnail(obj, 64)

    @admin.display(description="Face crop")
    def preview(self, obj):
        return crop_thumbnail(obj, 160)

    @admin.display(description="Reason", ordering="reason")
    def reason_label(self, obj):
        return reason_or_face_taken(obj)

    @admin.display(description="Detection score", ordering="detection_score")
    def score(self, obj):
        return rounded(obj.detection_score, 3)

    @admin.display(description="Sharpness", ordering="sharpness")
    def sharpness_label(self, obj):
        return rounded(obj.sharpness, 1)

    @admin.display(description="Status", ordering="status")
    def status_label(self, obj):
        return status_badge(obj)

    def save_model(self, request, obj, form, change):
        if not change:
            obj.uploaded_by = request.user
        upload = form.cleaned_data.get("image")
        if "image" in form.changed_data and upload:
            # A face chosen in the old photo names nothing in the new one: it is chosen afresh.
            obj.chosen_box, obj.face_choice, obj.face_choice_reason = None, "", ""
            # Stored like every other upload: without its text metadata (people/services.py).
            upload.seek(0)
            obj.original_name = obj.original_name or services.safe_name(upload.name or "")
            photo = ContentFile(services.strip_metadata(upload.read()))
            obj.image = None  # not the upload as it came: photo_stored writes the stripped photo
            with services.photo_stored(obj, upload.name or "upload", photo):
                super().save_model(request, obj, form, change)
            note_photo_stored(request, obj)
        else:
            super().save_model(request, obj, form, change)
        if "image" in form.changed_data or "person" in form.changed_data:
            services.queue_processing(obj.pk)

    def delete_model(self, request, obj):
        services.delete_face(obj)

    def delete_queryset(self, request, queryset):
        with transaction.atomic():  # all or none, and one rewrite of the gallery snapshot on disk
            for face in queryset:
                services.delete_face(face)

    @admin.action(description="Re-process selected photos", permissions=["change"])
    def reprocess(self, request, queryset):
        reprocess_faces(request, queryset)

    @admin.action(description="Approve selected photos held for review", permissions=["change"])
    def approve(self, request, queryset):
        count = 0
        for face in queryset.filter(status=FaceImage.Status.REVIEW):
            services.approve(face)
            count += 1
        messages.info(request, f"{count} photo(s) approved.")
