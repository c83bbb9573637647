"""The admin's "Unknown visitors": who was seen and not recognized, and what staff do about them.

A visitor's page shows its crop (only with VISITOR_KEEP_CROP), sightings, kiosks and times, with
three actions: enroll as a new person, "this is <existing person>" (the same mislabel review as an
uploaded photo), and discard. Nothing here is editable by hand."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db.models import Prefetch
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html

from people.models import Person

from . import services
from .models import Sighting, Visitor

CROP_HEIGHT = 64


class EnrollForm(forms.Form):
    name = forms.CharField(max_length=200, label="Name", help_text="The new person's name.")


class AssignForm(forms.Form):
    person = forms.ModelChoiceField(queryset=Person.objects.filter(is_active=True).order_by("name", "id"), label="Person")


def crop_tag(visitor: Visitor, height: int = CROP_HEIGHT) -> str:
    if not any(s.crop for s in visitor.sightings.all()):
        return "-"
    url = reverse("visitor-crop", kwargs={"pk": visitor.pk})
    return format_html('<img src="{}" height="{}" alt="face of visitor {}">', url, height, visitor.pk)


def kiosk_names(visitor: Visitor) -> str:
    names = {str(s.kiosk) for s in visitor.sightings.all() if s.kiosk is not None}
    names |= {f"user: {s.user}" for s in visitor.sightings.all() if s.user is not None}
    return ", ".join(sorted(names)) or "-"


@admin.action(description="Discard the selected visitors", permissions=["delete"])
def discard_selected(modeladmin, request, queryset):
    count = 0
    for visitor in queryset:
        services.discard(visitor)
        count += 1
    modeladmin.message_user(request, f"{count} visitor(s) discarded with their sightings.")


@admin.register(Visitor)
class VisitorAdmin(admin.ModelAdmin):
    list_display = ["__str__", "crop", "sighting_count", "places", "first_seen_at", "last_seen_at"]
    list_display_links = ["__str__"]
    actions = [discard_selected]
    ordering = ["-last_seen_at", "-id"]

    def get_queryset(self, request):
        sightings = Sighting.objects.select_related("kiosk", "user").order_by("-seen_at", "-id")
        return super().get_queryset(request).prefetch_related(Prefetch("sightings", queryset=sightings))

    @admin.display(description="Face")
    def crop(self, obj):
        return crop_tag(obj)

    @admin.display(description="Sightings")
    def sighting_count(self, obj):
        return len(obj.sightings.all())

    @admin.display(description="Kiosks / accounts")
    def places(self, obj):
        return kiosk_names(obj)

    def has_add_permission(self, request):
        return False  # visitors come from the camera only

    def has_change_permission(self, request, obj=None):
        return False

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # "discard" says what it does
        return actions

    def change_view(self, request, object_id, form_url="", extra_context=None):
        if not self.has_view_permission(request):
            return super().change_view(request, object_id, form_url, extra_context)
        visitor = get_object_or_404(self.get_queryset(request), pk=object_id)
        enroll_form, assign_form = EnrollForm(prefix="enroll"), AssignForm(prefix="assign")
        if request.method == "POST":
            if not request.user.is_staff or not self.has_delete_permission(request, visitor):
                return super().change_view(request, object_id, form_url, extra_context)
            result, error = None, None
            if "_enroll" in request.POST:
                enroll_form = EnrollForm(request.POST, prefix="enroll")
                if enroll_form.is_valid():
                    try:
                        result = services.enroll_new_person(visitor, enroll_form.cleaned_data["name"], by=request.user)
                    except services.Refused as err:
                        error = err.message
            elif "_assign" in request.POST:
                assign_form = AssignForm(request.POST, prefix="assign")
                if assign_form.is_valid():
                    try:
                        result = services.assign_to_person(visitor, assign_form.cleaned_data["person"], by=request.user)
                    except services.Refused as err:
                        error = err.message
            if error:
                messages.error(request, error)
            if result is not None:
                held = len(result.faces) - result.accepted
                text = f"{visitor} is now {result.person.name}: {result.accepted} face(s) added to the gallery"
                if held:
                    text += f", {held} held for review (possible mislabel): check them on the person's page"
                messages.success(request, text + ".")
                return HttpResponseRedirect(reverse("admin:people_person_change", args=[result.person.pk]))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": f"{visitor}",
            "visitor": visitor,
            "crop": crop_tag(visitor, 112),
            "places": kiosk_names(visitor),
            "sightings": list(visitor.sightings.all()),
            "enroll_form": enroll_form,
            "assign_form": assign_form,
            "delete_url": reverse("admin:visitors_visitor_delete", args=[visitor.pk]),
            "can_act": self.has_delete_permission(request, visitor),
        }
        return TemplateResponse(request, "admin/visitors/visitor/visitor.html", context)
