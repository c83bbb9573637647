"""Write the gallery's face embeddings to one .npz file (see people/bulk.py for the format).

    python manage.py export_embeddings gallery.npz [--force]

The file holds biometric templates: keep it like the database (special-category data).
"""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from people import bulk


class Command(BaseCommand):
    help = (
        "Write the gallery (accepted faces of active people) to OUT.npz: names, L2-normalized float32 embeddings, "
        "the embedder's name, external ids and face ids; no photos. The file holds BIOMETRIC TEMPLATES that "
        "identify these people (GDPR Art. 9 special-category data): it is created readable by its owner only; "
        "keep, move and delete it like the database itself. Each export is recorded in the audit log (counts only)."
    )

    def add_arguments(self, parser):
        parser.add_argument("out", type=Path, help="The .npz file to write (written whole or not at all).")
        parser.add_argument("--force", action="store_true", help="Replace OUT if it exists.")

    def handle(self, out: Path, force: bool = False, **options):
        try:
            report = bulk.export_gallery(out, force=force)
        except bulk.BulkError as err:
            raise CommandError(str(err))
        self.stdout.write(
            self.style.SUCCESS(
                f"Wrote {report.faces:,} faces of {report.people:,} people ({report.embedder}, {report.dim}-d) "
                f"to {out} in {report.seconds:.1f} s."
            )
        )
        if report.merged_names:
            self.stdout.write(
                self.style.WARNING(
                    f"{report.merged_names:,} names belong to several people without an external id: "
                    "an import makes each such name one person."
                )
            )
        self.stdout.write(
            "This file holds biometric templates (special-category data): keep it like the database, and delete it when done."
        )
