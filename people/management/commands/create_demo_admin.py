"""Create (once) a demo staff account for a fresh installation and print its credentials."""

import os
import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create the demo admin account if no superuser exists, and print its credentials."

    def handle(self, *args, **options):
        User = get_user_model()
        username = os.environ.get("DEMO_ADMIN_USER", "admin")
        if User.objects.filter(is_superuser=True).exists():
            self.stdout.write(f"A superuser exists already; log in at /admin/ (demo user name: {username}).")
            return
        password = os.environ.get("DEMO_ADMIN_PASSWORD") or secrets.token_urlsafe(9)
        User.objects.create_superuser(username, f"{username}@example.com", password)
        self.stdout.write(self.style.SUCCESS(f"Demo admin created: user {username!r}, password {password!r} (log in at /admin/)"))
