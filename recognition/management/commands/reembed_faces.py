"""Re-embed enrolled faces for the served embedder (FACE_EMBEDDER) from their stored photos.

    python manage.py reembed_faces [--batch 16] [--limit N]

Resumable: each batch is committed; a re-run continues with the faces still lacking the served
embedder. Faces whose photo is gone (retention) are listed, not re-embedded.
"""

from django.core.management.base import BaseCommand
from tqdm import tqdm

from recognition.reembedding import reembed_faces


class Command(BaseCommand):
    help = "Re-embed enrolled faces that lack the served embedder, from their stored photos (resumable)."

    def add_arguments(self, parser):
        parser.add_argument("--batch", type=int, default=16, help="faces embedded and committed together")
        parser.add_argument("--limit", type=int, default=None, help="stop after this many faces")

    def handle(self, batch: int, limit: int | None, **options):
        with tqdm(unit="face", desc="re-embedding", disable=None) as bar:
            report = reembed_faces(batch=batch, limit=limit, progress=bar.update)
        self.stdout.write(
            f"Served embedder {report.embedder}: {report.reembedded} of {report.lacking_before} faces re-embedded "
            f"in {report.seconds:.1f} s; {report.lacking_after} still lack it."
        )
        if report.photo_gone:
            self.stdout.write(
                f"{len(report.photo_gone)} faces cannot be re-embedded: their photo is gone (photo retention) or unreadable, "
                f"and the stored 160x160 crop is too tight for every embedder's alignment. Face ids: "
                + ", ".join(map(str, report.photo_gone[:50]))
                + (" ..." if len(report.photo_gone) > 50 else "")
            )
        if report.no_geometry:
            self.stdout.write(
                f"{len(report.no_geometry)} faces have no recorded box and landmarks (process them again): "
                + ", ".join(map(str, report.no_geometry[:50]))
            )
