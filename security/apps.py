from django.apps import AppConfig


class SecurityConfig(AppConfig):
    name = "security"
    verbose_name = "API access and audit"
