"""Delete original photos older than FACE_PHOTO_RETENTION_DAYS (embeddings stay), and audit events,
check-ins and webhook deliveries past their retention periods, consent records past
CHECKIN_RETENTION_DAYS that nothing refers to, and model versions past TRAINING_KEEP_VERSIONS.

    python manage.py apply_retention            # the configured number of days
    python manage.py apply_retention --days 30

The same runs daily in the django-q cluster (schedule "privacy: apply retention").
"""

from django.core.management.base import BaseCommand

from privacy import services


class Command(BaseCommand):
    help = (
        "Apply the retention periods of photos, audit events, check-ins, consent records, webhook deliveries and model versions."
    )

    def add_arguments(self, parser):
        parser.add_argument("--days", type=int, default=None, help="Override FACE_PHOTO_RETENTION_DAYS (0 keeps photos).")

    def handle(self, days=None, **options):
        report = services.apply_retention(days)
        self.stdout.write(
            f"Deleted {report.photos_deleted} original photos (embeddings kept), {report.crops_deleted} crops, "
            f"{report.audit_events_deleted} audit events, {report.checkins_deleted} check-ins, "
            f"{report.future_checkins_deleted} edge check-ins dated in the future, "
            f"{report.consents_deleted} consent records nothing referred to, "
            f"{report.webhook_deliveries_deleted} webhook deliveries, {report.model_versions_deleted} model versions, "
            f"{report.uncommitted_photos_deleted} photos of uploads that were rolled back."
        )
