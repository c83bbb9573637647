"""The admin's "Embedder switches" page: the embedder served, a switch's progress and evaluation, and
the buttons to start, force or roll back a switch (permission ``recognition.switch_embedder``)."""

from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from . import embedder_switch, pipelines
from .engine.fused import EMBEDDERS
from .models import EmbedderSwitch

COLOURS = {"active": "#1a7f37", "blocked": "#9a6700", "failed": "#cf222e", "reembedding": "#0969da", "evaluating": "#0969da"}


def _rate(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def evaluation_html(evaluation: dict):
    if not evaluation or "old" not in evaluation:
        return "-"
    rows = format_html_join(
        "",
        "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{} of {}</td><td>{}</td><td>{} of {}</td><td>{}</td></tr>",
        (
            (
                role,
                row.get("name") or row.get("embedder"),
                f"{row['threshold']:.4f}",
                row["not_found"],
                row["genuine_searches"],
                _rate(row.get("frr")),
                row["false_accepts"],
                row["impostor_searches"],
                _rate(row.get("far")),
            )
            for role in ("old", "new")
            for row in [evaluation.get(role)]
            if row
        ),
    )
    return format_html(
        "<table><thead><tr><th></th><th>embedder</th><th>threshold (per search)</th><th>genuine not found</th><th>FRR</th>"
        "<th>impostor searches matched</th><th>FAR</th></tr></thead><tbody>{}</tbody></table><p>{}: {}</p>{}",
        rows,
        "Not worse" if evaluation.get("not_worse") else "Worse",
        evaluation.get("rule", ""),
        sample_note(evaluation),
    )


def sample_note(evaluation: dict) -> str:
    """How many faces were searched when the evaluation took a sample (EMBEDDER_SWITCH_EVAL_MAX_FACES)."""
    if not evaluation.get("sampled"):
        return ""
    searched = (evaluation.get("new") or {}).get("faces", 0)
    return format_html(
        "<p>Searched {} of the {} faces both embedders hold: a fixed-seed sample of whole people "
        "(EMBEDDER_SWITCH_EVAL_MAX_FACES), at the thresholds of the whole gallery.</p>",
        searched,
        evaluation.get("faces_both"),
    )


@admin.register(EmbedderSwitch)
class EmbedderSwitchAdmin(admin.ModelAdmin):
    change_list_template = "admin/recognition/embedderswitch/change_list.html"
    list_display = ["pk", "embedder", "status_label", "progress", "trigger", "force", "created_at", "activated_at", "retired_at"]
    list_filter = ["status", "embedder"]
    fields = [
        "embedder",
        "name",
        "previous_name",
        "status_label",
        "progress",
        "trigger",
        "force",
        "requested_by",
        "activated_by",
        "evaluation_table",
        "note",
        "skipped",
        "error",
        "runs",
        "worker",
        "created_at",
        "started_at",
        "heartbeat_at",
        "finished_at",
        "activated_at",
        "retired_at",
    ]

    def get_readonly_fields(self, request, obj=None):
        return self.fields

    def has_add_permission(self, request):
        return False  # switches are started with the buttons (or manage.py switch_embedder)

    def has_delete_permission(self, request, obj=None):
        return False  # the record of what was served when

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("start/", wrap(self.start_view), name="recognition_embedderswitch_start"),
            path("<int:pk>/force/", wrap(self.force_view), name="recognition_embedderswitch_force"),
            path("rollback/", wrap(self.rollback_view), name="recognition_embedderswitch_rollback"),
            *super().get_urls(),
        ]

    def _check(self, request):
        if request.method != "POST":
            raise PermissionDenied("POST only.")
        if not request.user.has_perm("recognition.switch_embedder"):
            raise PermissionDenied("You may not switch the served embedder.")

    def _back(self):
        return redirect(reverse("admin:recognition_embedderswitch_changelist"))

    def start_view(self, request):
        self._check(request)
        kind = request.POST.get("embedder", "")
        try:
            switch = embedder_switch.start_switch(kind, by=request.user, force=bool(request.POST.get("force")))
        except embedder_switch.SwitchRefused as err:
            messages.error(request, str(err))
        else:
            messages.success(
                request, f"The switch to {switch.embedder} is queued; the training worker runs it in the background."
            )
        return self._back()

    def force_view(self, request, pk: int):
        self._check(request)
        switch = EmbedderSwitch.objects.filter(pk=pk).first()
        try:
            if switch is None:
                raise embedder_switch.SwitchRefused(f"No switch #{pk}.")
            embedder_switch.force_blocked(switch, by=request.user)
        except embedder_switch.SwitchRefused as err:
            messages.error(request, str(err))
        else:
            messages.success(request, f"The switch to {switch.embedder} is forced; it is activated in the background.")
        return self._back()

    def rollback_view(self, request):
        self._check(request)
        try:
            back = embedder_switch.rollback(by=request.user)
        except embedder_switch.SwitchRefused as err:
            messages.error(request, str(err))
        else:
            messages.success(request, f"{back.embedder} is served again.")
        return self._back()

    def changelist_view(self, request, extra_context=None):
        embedder_switch.resume_dead_switches()
        active = EmbedderSwitch.objects.active()
        extra_context = extra_context or {}
        extra_context.update(
            served=pipelines.refresh_served_kind(),
            served_name=pipelines.served_embedder(),
            wanted=settings.FACE_EMBEDDER,
            embedders=[e for e in EMBEDDERS],
            active=active,
            in_progress=EmbedderSwitch.objects.in_progress().first(),
            blocked=EmbedderSwitch.objects.filter(status=EmbedderSwitch.Status.BLOCKED).first(),
            can_switch=request.user.has_perm("recognition.switch_embedder"),
            active_evaluation=evaluation_html(active.evaluation) if active else "-",
        )
        return super().changelist_view(request, extra_context)

    @admin.display(description="Status", ordering="status")
    def status_label(self, obj):
        return format_html('<strong style="color:{}">{}</strong>', COLOURS.get(obj.status, "#57606a"), obj.get_status_display())

    @admin.display(description="Progress")
    def progress(self, obj):
        return format_html(
            '<progress value="{}" max="100" style="width:8em"></progress> {} of {}', obj.percent, obj.done, obj.total
        )

    @admin.display(description="Evaluation: old and new side by side")
    def evaluation_table(self, obj):
        return evaluation_html(obj.evaluation)
