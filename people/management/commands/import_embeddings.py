"""Add faces to the gallery from an .npz of embeddings, without photos (see people/bulk.py).

    python manage.py import_embeddings gallery.npz --legal-basis explicit_consent

Rows with the same external id, else the same name, are one person; an existing person with that
external id (else the one person of that name) gets the faces, anyone else is created with the
legal basis given. The file is refused, and nothing written, if it is malformed or was made by
another embedder than the one this site serves. All rows are written in one transaction.

A management command is UI: it asks recognition which embedder the settings serve (its name,
from the pipeline's settings; no model is loaded) and hands the checked arrays to people.bulk.
"""

import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from people import bulk
from people.models import LegalBasis
from recognition.pipelines import pipeline_config


class Command(BaseCommand):
    help = (
        "Add the faces of IN.npz (names, L2-normalized float32 embeddings, embedder; optional external_ids) to "
        "the gallery as accepted faces without photos, all or none. Rows with one external id, else one name, "
        "are one person: an existing person with that external id (else the only one of that name) gets the faces, "
        "others are created with --legal-basis. The file holds biometric templates (special-category data)."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", type=Path, help="The .npz file to read (see export_embeddings).")
        parser.add_argument(
            "--legal-basis",
            required=True,
            choices=LegalBasis.values,
            help="The GDPR Art. 9(2) basis for holding these faces, recorded on each person created.",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=bulk.DEFAULT_BATCH_SIZE,
            help="Rows per executemany on SQLite (PostgreSQL streams them with COPY); one transaction for all.",
        )
        parser.add_argument(
            "--normalize", action="store_true", help="Divide each embedding by its norm instead of refusing unnormalized rows."
        )

    def handle(self, file: Path, legal_basis=None, batch_size=bulk.DEFAULT_BATCH_SIZE, normalize=False, **options):
        if legal_basis not in LegalBasis.values:  # argparse checks the command line; this, call_command's kwargs
            raise CommandError(f"--legal-basis is required, one of: {', '.join(LegalBasis.values)}")
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        try:
            started = time.perf_counter()
            data = bulk.read_embeddings(file, max_faces=settings.FACE_IMPORT_MAX_FACES, normalize=normalize)
            served = pipeline_config()
            bulk.check_embedder(data, served.embedder_name, served.dim)
            read_seconds = time.perf_counter() - started
            report = bulk.import_embeddings(data, legal_basis, batch_size=batch_size, source=file.name)
        except bulk.BulkError as err:
            raise CommandError(f"{file}: {err} Nothing was imported.")
        seconds = read_seconds + report.seconds
        self.stdout.write(
            self.style.SUCCESS(
                f"Imported {report.faces:,} faces ({report.embedder}, {report.dim}-d): {report.people_created:,} people "
                f"created, {report.people_extended:,} existing people given faces, in {seconds:.2f} s "
                f"({report.faces / max(seconds, 1e-9):,.0f} faces/s: reading and checking {read_seconds:.2f} s, "
                f"writing {report.seconds:.2f} s)."
            )
        )
        if report.inactive_people:
            self.stdout.write(
                self.style.WARNING(f"{report.inactive_people:,} of those people are inactive: their faces are not served.")
            )
        if report.names_kept:
            self.stdout.write(f"{report.names_kept:,} people found by external id keep their name here, not the file's.")
        self.stdout.write("Every process serves the faces from its next request; one retrain is queued.")
