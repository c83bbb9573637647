from django.apps import AppConfig


class SecurityConfig(AppConfig):
    name = "security"
    verbose_name = "API access and audit"

    def ready(self):
        from . import schema  # noqa: F401  (registers the OpenAPI auth scheme)
