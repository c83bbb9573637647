from django.apps import AppConfig


class VisitorsConfig(AppConfig):
    name = "visitors"
    verbose_name = "Unknown visitors"

    def ready(self):
        from . import signals  # noqa: F401
