from django.conf import settings
from django.contrib import admin, messages
from django.shortcuts import redirect
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from . import open_set, services
from .models import ModelVersion

STATUS_COLOURS = {"active": "#1a7f37", "ready": "#0969da", "failed": "#cf222e", "training": "#9a6700", "queued": "#57606a"}


def percent(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def percent_of(value, count, what: str) -> str:
    """A rate beside its sample size: 100% of 5 faces means little, 99% of 3,000 a lot."""
    if value is None:
        return "-"
    return f"{percent(value)} of {count:,} {what}" if count is not None else percent(value)


def open_set_html(version, gallery_now: int):
    """A table: gallery size (faces) -> threshold in force and expected false accepts per search."""
    from django.conf import settings

    from .open_set import calibration, impostor_tails

    tails = impostor_tails(version)
    if not tails:
        return format_html(
            "No impostor tail for the served embedder (run <code>manage.py calibrate_open_set</code>): the per-pair "
            "threshold {} is served at every gallery size.",
            f"{calibration(version, gallery_now).threshold:.3f}",
        )
    sizes = [("now", gallery_now)] + [("", n) for n in (100, 1_000, 10_000, 100_000, 1_000_000)]
    rows = format_html_join(
        "",
        "<tr><td>{}{}</td><td>{}</td><td>{}</td></tr>",
        (
            (f"{n:,}", " (the gallery now)" if label else "", f"{c.threshold:.3f}", percent_small(c.expected_far))
            for label, n in sizes
            for c in [calibration(version, n)]
        ),
    )
    sources = "; ".join(t.source or "site" for t in tails)
    return format_html(
        "<p>Target: at most {} of searches by somebody not enrolled name a person (OPEN_SET_FAR_PER_SEARCH). "
        "Calibrated on impostor score tails: {}.</p>"
        "<table><thead><tr><th>gallery (faces)</th><th>threshold in force</th><th>expected false accepts per search</th>"
        "</tr></thead><tbody>{}</tbody></table>",
        percent_small(settings.OPEN_SET_FAR_PER_SEARCH),
        sources,
        rows,
    )


def percent_small(value) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.2f}%" if value >= 1e-4 else f"{100 * value:.1e}%"


def threshold_fallback(metrics: dict, recognizer: str) -> str | None:
    """The run's note when it could not calibrate this recognizer's threshold and kept the setting."""
    for note in str((metrics or {}).get("threshold_note", "")).split(". "):
        if note.startswith(f"{recognizer}:"):
            return note.rstrip(".") + "."
    return None


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    change_list_template = "admin/training/modelversion/change_list.html"
    list_display = [
        "number",
        "status_label",
        "progress_bar",
        "trigger",
        "recognizer",
        "threshold_label",
        "accuracy",
        "macro_f1",
        "people_count",
        "image_count",
        "created_at",
        "activated_at",
    ]
    list_display_links = ["number"]
    list_filter = ["status", "trigger", "recognizer"]
    actions = ["activate_selected"]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "number",
                    "status_label",
                    "progress_bar",
                    "stage",
                    "trigger",
                    "requested_by",
                    "force_activate_label",
                    "activation_note",
                    "error",
                ]
            },
        ),
        (
            "Result",
            {
                "fields": [
                    "recognizer",
                    "embedder",
                    "threshold_detail",
                    "head_threshold_detail",
                    "open_set_table",
                    "metrics_table",
                    "comparison_table",
                    "plots",
                ]
            },
        ),
        (
            "Data and timings",
            {
                "fields": [
                    "people_count",
                    "image_count",
                    "timings_table",
                    "created_at",
                    "started_at",
                    "finished_at",
                    "activated_at",
                ]
            },
        ),
        ("Edge export", {"fields": ["tflite", "tflite_sha256", "dlib_tflite", "dlib_tflite_sha256", "labels", "labels_sha256"]}),
        ("Served softmax head", {"classes": ["collapse"], "fields": ["head", "head_sha256"]}),
        ("Log", {"classes": ["collapse"], "fields": ["log"]}),
    ]

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in ModelVersion._meta.fields] + [
            "status_label",
            "progress_bar",
            "force_activate_label",
            "timings_table",
            "threshold_detail",
            "head_threshold_detail",
            "open_set_table",
            "metrics_table",
            "comparison_table",
            "plots",
        ]

    def has_add_permission(self, request):
        return False  # versions come from training runs ("Retrain now")

    def get_urls(self):
        retrain = path("retrain/", self.admin_site.admin_view(self.retrain_view), name="training_modelversion_retrain")
        return [retrain, *super().get_urls()]

    def retrain_view(self, request):
        if request.method != "POST" or not request.user.is_staff or not self.has_change_permission(request):
            messages.error(request, "Only staff can start a training run.")
        else:
            version, created = services.request_training(
                ModelVersion.Trigger.ADMIN, user=request.user, force_activate=bool(request.POST.get("force"))
            )
            if created:
                messages.success(request, f"Version {version.number} is queued; the django-q worker trains it in the background.")
            else:
                messages.info(request, f"Version {version.number} is already queued; it will include every change made so far.")
        return redirect(reverse("admin:training_modelversion_changelist"))

    def changelist_view(self, request, extra_context=None):
        from people.models import FaceImage

        extra_context = extra_context or {}
        # what is served now, with or without an active version
        extra_context["open_set"] = format_html(
            '{}<p>Served embedder: <code>{}</code> (FACE_EMBEDDER asks for {}; see <a href="{}">embedder switches</a>); '
            "enrolled faces lacking it, not matched until <code>manage.py reembed_faces</code>: {}.</p>",
            open_set_html(ModelVersion.objects.active(), FaceImage.objects.in_gallery().count()),
            open_set.served_embedder(),
            settings.FACE_EMBEDDER,
            reverse("admin:recognition_embedderswitch_changelist"),
            f"{FaceImage.objects.lacking_served_embedder().count():,}",
        )
        extra_context["run_in_progress"] = ModelVersion.objects.filter(
            status__in=[ModelVersion.Status.QUEUED, ModelVersion.Status.TRAINING]
        ).exists()
        return super().changelist_view(request, extra_context)

    @admin.action(description="Activate the selected version (rollback)", permissions=["change"])
    def activate_selected(self, request, queryset):
        if queryset.count() != 1:
            messages.error(request, "Select exactly one version to activate.")
            return
        version = queryset.get()
        try:
            services.activate(version)
        except ValueError as err:
            messages.error(request, str(err))
            return
        messages.success(request, f"Version {version.number} is active; recognition uses it from the next request.")

    @admin.display(description="Status", ordering="status")
    def status_label(self, obj):
        return format_html(
            '<strong style="color:{}">{}</strong>', STATUS_COLOURS.get(obj.status, "#000"), obj.get_status_display()
        )

    @admin.display(description="Progress")
    def progress_bar(self, obj):
        if obj.status not in (ModelVersion.Status.QUEUED, ModelVersion.Status.TRAINING):
            return "-" if obj.status != ModelVersion.Status.FAILED else obj.stage
        # The run's latest log line says what the stage is doing (e.g. that the first export is a
        # one-time conversion of a few minutes), so a long stage does not look stuck.
        latest = (obj.log or "").strip().rsplit("\n", 1)[-1].split(" ", 1)[-1] if obj.log else ""
        return format_html(
            '<progress value="{}" max="100" style="width:8em"></progress> {}% <small>{}</small>'
            '<div class="progress-note" style="max-width:32em;color:var(--body-quiet-color)"><small>{}</small></div>',
            obj.progress,
            obj.progress,
            obj.stage,
            latest,
        )

    @admin.display(description="Timings")
    def timings_table(self, obj):
        timings = obj.timings or {}
        if not timings:
            return "-"
        total = sum(v for v in timings.values() if isinstance(v, (int, float)))
        rows = format_html_join(
            "", "<tr><td>{}</td><td>{}</td></tr>", ((stage, f"{seconds:.1f} s") for stage, seconds in timings.items())
        )
        return format_html("<table>{}<tr><th>total</th><th>{}</th></tr></table>", rows, f"{total:.1f} s")

    @admin.display(description="Force activate")
    def force_activate_label(self, obj):
        if obj.force_activate:
            return "Yes: activated when ready, even if it scores below the active version"
        return "No: activated only if it scores at least as well as the active version"

    def _threshold_detail(self, value, recognizer: str, setting: str, fmt: str, obj):
        if value is None:
            return "-"
        fallback = threshold_fallback(obj.metrics, recognizer)
        if fallback:
            return format_html(
                '{} <strong style="color:#9a6700">not calibrated: the {} setting is used</strong><br><small>{}</small>',
                fmt.format(value),
                setting,
                fallback,
            )
        impostors = (obj.metrics or {}).get("n_impostor")
        sample = f" on {impostors:,} impostor searches" if impostors is not None and recognizer == obj.recognizer else ""
        return format_html("{} <small>(calibrated on held-out data{})</small>", fmt.format(value), sample)

    @admin.display(description="Threshold (cosine)")
    def threshold_detail(self, obj):
        return self._threshold_detail(obj.threshold, "nearest_neighbour", "FACE_MATCH_THRESHOLD", "{:.3f}", obj)

    @admin.display(description="Head threshold (probability)")
    def head_threshold_detail(self, obj):
        return self._threshold_detail(obj.head_threshold, "softmax_head", "TRAINING_HEAD_MIN_PROBABILITY", "p {:.3f}", obj)

    @admin.display(description="Open set per search")
    def open_set_table(self, obj):
        """The cosine threshold this version serves for the gallery now and for larger ones, and the
        share of strangers' searches expected to name somebody there."""
        from people.models import FaceImage

        now = FaceImage.objects.in_gallery().count()
        return open_set_html(obj, now)

    @admin.display(description="Threshold")
    def threshold_label(self, obj):
        """The served recognizer's: a cosine similarity, or the softmax head's probability."""
        if obj.recognizer == ModelVersion.Recognizer.SOFTMAX_HEAD and obj.head_threshold is not None:
            return f"p {obj.head_threshold:.3f}"
        return "-" if obj.threshold is None else f"{obj.threshold:.3f}"

    @admin.display(description="Top-1")
    def accuracy(self, obj):
        m = obj.metrics or {}
        if m.get("top1_accuracy") is None:
            return "-"
        return format_html(
            '{} <small title="held-out faces">(n={})</small>', percent(m["top1_accuracy"]), m.get("n_known_probes", "?")
        )

    @admin.display(description="Macro F1")
    def macro_f1(self, obj):
        return percent(obj.metrics.get("macro_f1"))

    @admin.display(description="Metrics")
    def metrics_table(self, obj):
        m = obj.metrics or {}
        if not m:
            return "-"
        fallback = threshold_fallback(m, obj.recognizer)
        threshold = f"{m.get('threshold')} ({percent(m.get('target_far'))})"
        if fallback:
            threshold = f"{m.get('threshold')}: the default, not calibrated ({fallback})"
        rows = [
            ("Top-1 accuracy (held-out)", percent_of(m.get("top1_accuracy"), m.get("n_known_probes"), "held-out faces")),
            (
                "Macro precision / recall / F1",
                f"{percent(m.get('macro_precision'))} / {percent(m.get('macro_recall'))} / {percent(m.get('macro_f1'))}",
            ),
            ("Threshold (target FAR)", threshold),
            (
                "FAR / FRR at threshold",
                f"{percent_of(m.get('far'), m.get('n_impostor'), 'impostor searches')} / "
                f"{percent_of(m.get('frr'), m.get('n_genuine'), 'genuine claims')}",
            ),
            (
                "Identification rate at threshold",
                percent_of(m.get("identification_rate"), m.get("n_known_probes"), "held-out faces"),
            ),
            ("Unknown rejection", f"{percent(m.get('unknown_rejection'))} of {m.get('n_unknown_probes', 0)} unknown faces"),
            ("ROC AUC", "-" if m.get("auc") is None else f"{m['auc']:.4f}"),
            (
                "Faces: training / held-out",
                f"{m.get('train_faces')} / {m.get('held_out_faces')} ({len(m.get('train_only_people', []))} people training-only)",
            ),
            ("Genuine claims / impostor searches", f"{m.get('n_genuine')} / {m.get('n_impostor')}"),
        ]
        names = m.get("people_names", {})
        per_person = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (names.get(str(p["person"]), p["person"]), p["probes"], p["correct"])
                for p in m.get("per_person", [])
                if p["probes"]
            ),
        )
        evaluated = [p for p in m.get("per_person", []) if p["probes"]]
        return format_html(
            "<table>{}</table><details><summary>Per person (held-out): {} people evaluated, {} with a mistake</summary>"
            "<table><tr><th>person</th><th>probes</th><th>correct</th></tr>{}</table></details>",
            format_html_join("", "<tr><th>{}</th><td>{}</td></tr>", rows),
            len(evaluated),
            sum(1 for p in evaluated if p["correct"] < p["probes"]),
            per_person,
        )

    @admin.display(description="Model comparison (same split)")
    def comparison_table(self, obj):
        table = (obj.comparison or {}).get("table")
        if not table:
            return "-"
        production = obj.comparison.get("production")
        rows = format_html_join(
            "",
            "<tr{}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    mark_safe(' style="font-weight:bold"') if r["name"] == production else "",
                    r["name"],
                    r["input"],
                    percent(r.get("top1_accuracy")),
                    percent(r.get("macro_f1")),
                    percent(r.get("unknown_rejection")),
                    "-" if r.get("auc") is None else f"{r['auc']:.4f}",
                    "-" if r.get("train_seconds") is None else f"{r['train_seconds']:.2f} s",
                    r.get("error") or "",
                )
                for r in table
            ),
        )
        return format_html(
            "<table><tr><th>approach</th><th>input</th><th>top-1</th><th>macro F1</th><th>unknown rejection</th><th>AUC</th>"
            "<th>train time</th><th>note</th></tr>{}</table><p>Production: <strong>{}</strong>. {}</p>",
            rows,
            production,
            obj.comparison.get("reason", ""),
        )

    @admin.display(description="Plots")
    def plots(self, obj):
        images = [
            (reverse("model-plot", args=[obj.pk, kind]), alt)
            for f, kind, alt in ((obj.confusion_plot, "confusion", "confusion matrix"), (obj.roc_plot, "roc", "ROC"))
            if f
        ]
        if not images:
            return "-"
        return format_html_join("", '<img src="{}" alt="{}" style="max-width:480px;margin-right:1em">', images)
