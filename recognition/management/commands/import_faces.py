"""Bulk enrollment from a folder with one sub-folder per person.

    python manage.py import_faces ../shared/faces/people --legal-basis explicit_consent

--legal-basis (required) is recorded on each person the import creates, with the consent notice
version in force; people who already exist keep theirs.

The folder name becomes the person's name ("barack_obama" -> "Barack Obama"); an existing person
of that name gets the new photos. Photos are processed here, in this process, so the summary at
the end is final.

A photo with several faces of similar size is enrolled on its central subject when one clearly is
(a portrait with faces in the background: the largest face, at least CentralRule.min_ratio times
the next one's area, centred within CentralRule.max_offset of the image centre; measured on LFW in
BENCHMARKS.md, "Enrollment yield"), as every enrollment path does while the setting
FACE_ENROLL_CENTRAL_SUBJECT is on (the default); the summary names each such photo, the face taken
and why. ``--no-central-subject`` rejects them as several_faces instead, whatever the setting.
"""

from collections import Counter
from pathlib import Path

from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from people import services
from people.models import FaceChoice, FaceImage, LegalBasis, Person
from recognition import enrollment
from recognition.engine.images import ImageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def person_name(folder: str) -> str:
    return " ".join(part.capitalize() for part in folder.replace("-", "_").split("_") if part)


class Command(BaseCommand):
    help = "Enroll people from DIR/<person>/<photo> (one folder per person)."

    def add_arguments(self, parser):
        parser.add_argument("directory", type=Path)
        parser.add_argument("--limit-people", type=int, default=None, help="Import at most this many people.")
        parser.add_argument("--max-photos", type=int, default=None, help="At most this many photos per person.")
        parser.add_argument("--skip-existing", action="store_true", help="Skip people that already have photos.")
        parser.add_argument(
            "--no-central-subject",
            action="store_true",
            help="Reject photos of several similar-sized faces (several_faces) instead of taking a clear central subject.",
        )
        parser.add_argument(
            "--legal-basis",
            required=True,
            choices=LegalBasis.values,
            help="The GDPR Art. 9(2) basis for holding these faces, recorded on each person created.",
        )

    def handle(
        self,
        directory: Path,
        limit_people=None,
        max_photos=None,
        skip_existing=False,
        legal_basis=None,
        no_central_subject=False,
        **options,
    ):
        if legal_basis not in LegalBasis.values:  # argparse checks the command line; this, call_command's kwargs
            raise CommandError(f"--legal-basis is required, one of: {', '.join(LegalBasis.values)}")
        if not directory.is_dir():
            raise CommandError(f"{directory} is not a directory")
        folders = sorted(p for p in directory.iterdir() if p.is_dir())[:limit_people]
        jobs = []
        for folder in folders:
            photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:max_photos]
            if photos:
                jobs.append((folder, photos))
        if not jobs:
            raise CommandError(f"no photos found under {directory} (expected DIR/<person>/<photo>)")

        outcomes: Counter = Counter()
        reasons: Counter = Counter()
        rejected_lines, central_lines = [], []
        central = False if no_central_subject else None  # None: the setting FACE_ENROLL_CENTRAL_SUBJECT
        total = sum(len(photos) for _, photos in jobs)
        with tqdm(total=total, unit="photo", desc="Enrolling", disable=options.get("verbosity", 1) == 0) as bar:
            for folder, photos in jobs:
                name = person_name(folder.name)
                person = Person.objects.filter(name=name).first()
                if person is None:
                    person = Person(name=name, notes=f"Imported from {folder.name}/")
                    person.record_legal_basis(legal_basis)
                    person.save()
                if skip_existing and person.faces.exists():
                    bar.update(len(photos))
                    outcomes["skipped"] += len(photos)
                    continue
                for photo in photos:
                    upload = SimpleUploadedFile(photo.name, photo.read_bytes())
                    try:
                        face = services.enroll(person, upload, process=False)
                    except ImageError as err:
                        outcomes["rejected"] += 1
                        reasons[err.code] += 1
                        rejected_lines.append(f"  {folder.name}/{photo.name}: {err.message}")
                        bar.update(1)
                        continue
                    enrollment.process_face_image(face, central_subject=central)
                    outcomes[face.status] += 1
                    if face.face_choice == FaceChoice.CENTRAL:
                        central_lines.append(
                            f"  {folder.name}/{photo.name}: {face.face_choice_reason} -> {face.get_status_display().lower()}"
                        )
                    if face.status != FaceImage.Status.ACCEPTED:
                        reasons[face.reason_code] += 1
                        rejected_lines.append(f"  {folder.name}/{photo.name}: {face.get_status_display()}: {face.reason}")
                    bar.update(1)

        self.stdout.write("")
        self.stdout.write(
            self.style.SUCCESS(
                f"{len(jobs)} people, {total} photos: {outcomes['accepted']} accepted, "
                f"{outcomes['rejected']} rejected, {outcomes['review']} held for review"
                + (f", {outcomes['skipped']} skipped" if outcomes["skipped"] else "")
            )
        )
        if reasons:
            self.stdout.write("Reasons: " + ", ".join(f"{code} x{n}" for code, n in reasons.most_common()))
        if central_lines:
            self.stdout.write(f"Central subject taken in {len(central_lines)} photos of several faces:")
        for line in central_lines:
            self.stdout.write(line)
        for line in rejected_lines:
            self.stdout.write(line)
