from rest_framework.permissions import BasePermission

from security.models import ApiKey


class CanDownloadModel(BasePermission):
    """The label map holds names and face embeddings of enrolled people: staff, or an account
    (e.g. an edge device's) given the "download model files" permission. Of the API keys only a
    staff-role key may download (a client key reads the history, not the files)."""

    message = "Downloading model files needs staff or the 'Can download model files' permission."

    def has_permission(self, request, view):
        user = request.user
        if isinstance(request.auth, ApiKey) and not request.auth.allows("download"):
            return False
        return bool(user and user.is_authenticated and (user.is_staff or user.has_perm("training.download_modelversion")))
