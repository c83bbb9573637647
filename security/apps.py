from django.apps import AppConfig


class SecurityConfig(AppConfig):
    name = "security"
    verbose_name = "API access and audit"

    def ready(self):
        from . import schema, signals  # noqa: F401  (the OpenAPI auth scheme; token revocation)
