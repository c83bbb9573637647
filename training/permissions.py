from rest_framework.permissions import SAFE_METHODS, BasePermission


class IsStaffOrReadOnly(BasePermission):
    """Any authenticated user reads the history; only staff start runs or activate versions."""

    message = "Only staff can train or activate model versions."

    def has_permission(self, request, view):
        user = request.user
        if not (user and user.is_authenticated):
            return False
        return request.method in SAFE_METHODS or user.is_staff


class CanDownloadModel(BasePermission):
    """The label map holds names and face embeddings of enrolled people: staff, or an account
    (e.g. an edge device's) given the "download model files" permission."""

    message = "Downloading model files needs staff or the 'Can download model files' permission."

    def has_permission(self, request, view):
        user = request.user
        return bool(user and user.is_authenticated and (user.is_staff or user.has_perm("training.download_modelversion")))
