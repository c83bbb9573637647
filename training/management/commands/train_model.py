"""Queue a training run for the django-q worker (``--wait`` follows its progress until it ends)."""

import time

from django.core.management.base import BaseCommand

from training import services
from training.models import ModelVersion


class Command(BaseCommand):
    help = "Queue a training run (joins the queued one if there is one); the django-q worker runs it."

    def add_arguments(self, parser):
        parser.add_argument("--force", action="store_true", help="Activate even if it evaluates worse than the active version.")
        parser.add_argument("--wait", action="store_true", help="Print progress until the run ends (needs a running qcluster).")

    def handle(self, force=False, wait=False, **options):
        version, created = services.request_training(ModelVersion.Trigger.COMMAND, force_activate=force)
        self.stdout.write(f"Version {version.number} {'queued' if created else 'was already queued'}.")
        last = None
        while wait:
            version.refresh_from_db()
            state = (version.status, version.stage, version.progress)
            if state != last:
                self.stdout.write(f"  {version.status:9} {version.progress:3d}%  {version.stage}")
                last = state
            if version.status not in (ModelVersion.Status.QUEUED, ModelVersion.Status.TRAINING):
                self.stdout.write(version.activation_note or version.error)
                break
            time.sleep(2)
