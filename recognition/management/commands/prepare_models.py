"""Load the face models once, converting what the runtime needs, before any server starts.

    python manage.py prepare_models [--embedder facenet --embedder facenet+dlib]

With ``FACE_EMBED_RUNTIME=tflite`` (the default) FaceNet is converted to a TFLite file the first
time a process needs it (45-100 s of CPU), and with the fused embedder dlib's network too
(``FACE_DLIB_RUNTIME=tflite``); the files are kept in TRAINING_CACHE_DIR for every later process
(a file lock makes concurrent first starts wait for one conversion). ``make run`` and the test
script run this first, so no server's warm-up and no test pays for a conversion.
"""

import time

from django.core.management.base import BaseCommand

from recognition import pipelines
from recognition.engine.fused import EMBEDDERS


class Command(BaseCommand):
    help = "Convert (once per machine) and load the face models of the served embedder, or of those named."

    def add_arguments(self, parser):
        parser.add_argument(
            "--embedder",
            action="append",
            choices=EMBEDDERS,
            help="an embedder to prepare (repeatable); default: the one served now",
        )

    def handle(self, *args, **options):
        for kind in options["embedder"] or [pipelines.served_kind()]:
            started = time.perf_counter()
            pipe = pipelines.pipeline(kind)
            self.stdout.write(
                f"{pipe.embedder_name}: ready ({pipe.config.embed_runtime} runtime) in {time.perf_counter() - started:.1f} s"
            )
