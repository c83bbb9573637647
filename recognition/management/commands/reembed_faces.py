"""Bring enrolled faces lacking the served embedder up to date: from the template it already made
(kept by an embedder switch), else embedded from the stored photo or, once it is gone, the region.

    python manage.py reembed_faces [--batch 16] [--limit N]

Resumable: each batch is committed; a re-run continues with the faces still lacking the served
embedder. Faces with neither photo nor region are listed, not re-embedded. (Switching the served
embedder is ``manage.py switch_embedder``.)
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
            f"({report.from_region} from their stored region), {report.copied} from kept templates, "
            f"in {report.seconds:.1f} s; {report.lacking_after} still lack it."
        )
        if report.photo_gone:
            self.stdout.write(
                f"{len(report.photo_gone)} faces cannot be re-embedded: their photo is gone (photo retention) or unreadable, "
                f"and no face region was kept (enrolled before regions were kept). Face ids: "
                + ", ".join(map(str, report.photo_gone[:50]))
                + (" ..." if len(report.photo_gone) > 50 else "")
            )
        if report.no_geometry:
            self.stdout.write(
                f"{len(report.no_geometry)} faces have no recorded box and landmarks (process them again): "
                + ", ".join(map(str, report.no_geometry[:50]))
            )
