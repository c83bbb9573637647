from django.apps import AppConfig


class RecognitionConfig(AppConfig):
    name = "recognition"
    verbose_name = "Recognition"

    def ready(self):
        from . import signals  # noqa: F401  (a deleted photo or person leaves the snapshot on disk)
