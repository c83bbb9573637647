from django.apps import AppConfig


class TrainingConfig(AppConfig):
    name = "training"
    verbose_name = "Model versions"

    def ready(self):
        from . import signals  # noqa: F401  (connects the retrain-on-enrollment receivers)
