"""Recognition, verification and token endpoints: validate, call the service, shape the answer."""

from django.contrib.auth.signals import user_logged_in
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import status
from rest_framework.authtoken.serializers import AuthTokenSerializer
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from facesite import lockout
from facesite.api import ApiError, image_error, may_read_people
from security.audit import AuditedView
from security.authentication import issue_token
from security.models import ApiKey, Role
from security.permissions import TokenScope

from . import services
from .engine.images import ImageError
from .serializers import (
    RecognizeRequestSerializer,
    RecognizeResponseSerializer,
    VerifyRequestSerializer,
    VerifyResponseSerializer,
)


def _read(upload, field: str):
    try:
        return services.read_upload(upload)
    except ImageError as err:
        raise image_error(err, field)


class ObtainTokenView(APIView):
    """Exchange a username and password for an API token (valid API_TOKEN_TTL_HOURS)."""

    permission_classes = [AllowAny]
    authentication_classes = []
    parser_classes = [FormParser, MultiPartParser, *APIView.parser_classes]

    @extend_schema(request=AuthTokenSerializer, responses={200: {"type": "object", "properties": {"token": {"type": "string"}}}})
    def post(self, request):
        # The request goes to authenticate(): django-axes counts the failure and refuses a locked-out
        # username or address even with the right password (facesite/lockout.py).
        serializer = AuthTokenSerializer(data=request.data, context={"request": request})
        if not serializer.is_valid():
            if getattr(request, "axes_locked_out", False):
                locked = ApiError(lockout.LOCKED_OUT_CODE, lockout.lockout_message(), status.HTTP_429_TOO_MANY_REQUESTS)
                locked.wait = lockout.retry_after_seconds()  # sent as Retry-After
                raise locked
            errors = serializer.errors
            if "non_field_errors" in errors:
                raise ApiError("invalid_credentials", "Unable to log in with the given username and password.")
            raise ApiError("invalid", "username and password are required.", fields=errors)
        # A token is a sign-in: last_login is set, and django-axes clears the failures counted
        # against this username and address, as after the login forms.
        user = serializer.validated_data["user"]
        user_logged_in.send(sender=user.__class__, request=request, user=user)
        token = issue_token(serializer.validated_data["user"])  # a fresh one if theirs has expired
        return Response({"token": token.key})


def _is_staff(request) -> bool:
    """Staff users on their own token or session, or through a staff-role API key."""
    user = request.user
    if not (user and user.is_authenticated and user.is_staff):
        return False
    return not isinstance(request.auth, ApiKey) or request.auth.role == Role.STAFF


def _refusal(err: services.Refused) -> ApiError:
    fields = {err.field: [err.message]} if err.field else None
    return ApiError(err.code, err.message, _REFUSAL_STATUS.get(err.code, status.HTTP_400_BAD_REQUEST), fields=fields)


_REFUSAL_STATUS = {
    "no_face": status.HTTP_422_UNPROCESSABLE_ENTITY,
    "person_not_enrolled": status.HTTP_422_UNPROCESSABLE_ENTITY,
    "unknown_person": status.HTTP_404_NOT_FOUND,
}


class _FaceQuestionView(AuditedView, APIView):
    """POST images, get the service's answer (a Recognition or a Verification) as it is sent; a
    request the service refuses is an API error, and the audit log keeps the answer's summary."""

    permission_classes = [IsAuthenticated, TokenScope]
    parser_classes = [MultiPartParser, FormParser]
    request_serializer: type

    def ask(self, request, data: dict):
        raise NotImplementedError

    def post(self, request):
        params = self.request_serializer(data=request.data)
        params.is_valid(raise_exception=True)
        try:
            answer = self.ask(request, params.validated_data)
        except services.Refused as err:
            raise _refusal(err)
        self.audit_summary = answer.audit_summary()
        return Response(answer.answer())


@extend_schema_view(post=extend_schema(request=RecognizeRequestSerializer, responses=RecognizeResponseSerializer))
class RecognizeView(_FaceQuestionView):
    """Who is in this image: every face, matched against the enrolled gallery."""

    token_scope = audit_action = "recognize"
    request_serializer = RecognizeRequestSerializer

    def ask(self, request, data: dict):
        all_candidates = data.get("candidates") == "all"
        if all_candidates and not _is_staff(request):
            raise ApiError(
                "permission_denied",
                "Only staff may see candidates below the threshold (candidates=all).",
                status.HTTP_403_FORBIDDEN,
            )
        rgb = _read(data["image"], "image")
        recognition = services.recognize(rgb, data.get("top_k"), data.get("threshold"), all_candidates)
        if not recognition.faces:
            raise services.Refused("no_face", "image: no face was found in the image.", "image")
        return recognition


@extend_schema_view(post=extend_schema(request=VerifyRequestSerializer, responses=VerifyResponseSerializer))
class VerifyView(_FaceQuestionView):
    """Are these two faces the same person? (Or: is this face the given person? Then the answer
    names the person only if verified, or to a caller who may read the roster.)"""

    token_scope = audit_action = "verify"
    request_serializer = VerifyRequestSerializer

    def ask(self, request, data: dict):
        fields = ("image",) if "person_id" in data else ("image1", "image2")
        images = {field: _read(data[field], field) for field in fields}
        return services.verify(
            images,
            person_id=data.get("person_id"),
            threshold=data.get("threshold"),
            # who may read the roster is told who a person_id is; anybody else only when verified
            reads_people="person_id" in data and may_read_people(request),
        )
