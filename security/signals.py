"""A user's API tokens die with their password: changing it, or deactivating the account, deletes them.

Checked on the user model's save (not on login or in a form), so every way of changing a password
counts: the admin, `manage.py changepassword`, a password-reset link, `set_password()` in a shell.
The old row is read only when the save may touch the password or the active flag (a login's
`last_login` update does not). Role-limited API keys are revoked explicitly, not here.
"""

from __future__ import annotations

from django.conf import settings
from django.db.models.signals import post_save, pre_save
from django.dispatch import receiver
from rest_framework.authtoken.models import Token

_WATCHED = {"password", "is_active"}


@receiver(pre_save, sender=settings.AUTH_USER_MODEL, dispatch_uid="security.tokens.note_credential_change")
def note_credential_change(sender, instance, raw=False, update_fields=None, **kwargs):
    instance._revoke_tokens = False
    if raw or instance.pk is None or (update_fields is not None and not _WATCHED & set(update_fields)):
        return
    old = sender._default_manager.filter(pk=instance.pk).values("password", "is_active").first()
    if old is None:
        return
    instance._revoke_tokens = old["password"] != instance.password or (old["is_active"] and not instance.is_active)


@receiver(post_save, sender=settings.AUTH_USER_MODEL, dispatch_uid="security.tokens.revoke_on_credential_change")
def revoke_on_credential_change(sender, instance, raw=False, **kwargs):
    if getattr(instance, "_revoke_tokens", False):
        Token.objects.filter(user=instance).delete()
        instance._revoke_tokens = False
