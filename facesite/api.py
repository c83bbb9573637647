"""What the API shares across apps: who may read the roster, face metadata and model versions."""

from rest_framework.permissions import SAFE_METHODS, BasePermission

from security.models import ApiKey
from security.permissions import required_scope


def is_staff(request) -> bool:
    user = request.user
    return bool(user and user.is_authenticated and user.is_active and user.is_staff)


class IsStaffOrReadRole(BasePermission):
    """Staff change and read everything; reading otherwise needs an explicit role.

    The people, their photos' metadata and the model versions (with their metrics) are biometric
    records: an account made only to use /checkin/ must not list them, so a signed-in user's own
    session or token reads nothing here. An explicit role may read: an API key whose role grants
    the view's read scope ("read": a client key, or a staff-role key of a non-staff account), or an
    account given, in the admin, a Django permission the view names in `read_permission` (one name
    or several, any of which will do). Writes always need a staff user: a key acts for its user,
    never beyond.
    """

    message = "Only staff, or an API key or account with a read role, may see this."

    def has_permission(self, request, view):
        if is_staff(request):
            return True
        user = request.user
        if not (user and user.is_authenticated) or request.method not in SAFE_METHODS:
            return False
        key = request.auth
        if isinstance(key, ApiKey):
            return key.allows(required_scope(request, view))
        wanted = getattr(view, "read_permission", ())
        return any(user.has_perm(name) for name in ((wanted,) if isinstance(wanted, str) else wanted))
