"""Recognition, verification and token endpoints: validate, call the service, shape the answer."""

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.authtoken.models import Token
from rest_framework.authtoken.serializers import AuthTokenSerializer
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from people.models import Person
from security.audit import AuditedView
from security.permissions import TokenScope

from . import services
from .engine.images import ImageError
from .errors import ApiError, image_error
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


def _no_face(field: str) -> ApiError:
    return ApiError("no_face", f"{field}: no face was found in the image.", status.HTTP_422_UNPROCESSABLE_ENTITY)


class ObtainTokenView(APIView):
    """Exchange a username and password for an API token."""

    permission_classes = [AllowAny]
    authentication_classes = []
    parser_classes = [FormParser, MultiPartParser, *APIView.parser_classes]

    @extend_schema(request=AuthTokenSerializer, responses={200: {"type": "object", "properties": {"token": {"type": "string"}}}})
    def post(self, request):
        serializer = AuthTokenSerializer(data=request.data, context={"request": request})
        if not serializer.is_valid():
            errors = serializer.errors
            if "non_field_errors" in errors:
                raise ApiError("invalid_credentials", "Unable to log in with the given username and password.")
            raise ApiError("invalid", "username and password are required.", fields=errors)
        token, _ = Token.objects.get_or_create(user=serializer.validated_data["user"])
        return Response({"token": token.key})


class RecognizeView(AuditedView, APIView):
    """Who is in this image: every face, matched against the enrolled gallery."""

    permission_classes = [IsAuthenticated, TokenScope]
    token_scope = audit_action = "recognize"
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(request=RecognizeRequestSerializer, responses=RecognizeResponseSerializer)
    def post(self, request):
        params = RecognizeRequestSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        rgb = _read(params.validated_data["image"], "image")
        version = services.active_model_version()
        served = services.recogniser(version)
        threshold = params.validated_data.get("threshold")
        threshold = served.threshold if threshold is None else threshold
        recognised = services.recognize(rgb, top_k=params.validated_data.get("top_k"), threshold=threshold, served=served)
        if not recognised:
            raise _no_face("image")
        ids = {c.person_id for r in recognised for c in r.result.candidates}
        names = dict(Person.objects.filter(pk__in=ids).values_list("id", "name"))

        def candidate(c):
            return {"person_id": c.person_id, "name": names.get(c.person_id, ""), "similarity": round(c.similarity, 4)}

        faces = []
        for r in recognised:
            face = r.analysed.face
            match = r.result.match
            faces.append(
                {
                    "box": face.box_ints(),
                    "landmarks": face.landmarks_dict(),
                    "detection_score": round(face.score, 4),
                    "match": candidate(match) if match else None,
                    "candidates": [candidate(c) for c in r.result.candidates],
                    "margin": None if r.result.margin is None else round(r.result.margin, 4),
                    "scored_by": r.result.scored_by,
                }
            )
        return Response(
            {
                "faces": faces,
                "threshold": round(threshold, 4),
                "recogniser": served.name,
                "model_version": version.number if version else None,
                "embedder": services.pipeline().embedder_name,
                "gallery_size": len(served.gallery),  # the gallery this answer was matched against
            }
        )


class VerifyView(AuditedView, APIView):
    """Are these two faces the same person? (Or: is this face the given person?)"""

    permission_classes = [IsAuthenticated, TokenScope]
    token_scope = audit_action = "verify"
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(request=VerifyRequestSerializer, responses=VerifyResponseSerializer)
    def post(self, request):
        params = VerifyRequestSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        threshold = data.get("threshold")
        threshold = services.verify_threshold() if threshold is None else threshold

        if "person_id" in data:
            person = Person.objects.filter(pk=data["person_id"]).first()
            if person is None:
                raise ApiError("unknown_person", f"No person with id {data['person_id']}.", status.HTTP_404_NOT_FOUND)
            rgb = _read(data["image"], "image")
            face, count = services.main_face(rgb)
            if face is None:
                raise _no_face("image")
            similarity, n = services.person_similarity(face.embedding, person.pk)
            if similarity is None:
                raise ApiError(
                    "person_not_enrolled",
                    f"{person.name} has no accepted face images to compare with.",
                    status.HTTP_422_UNPROCESSABLE_ENTITY,
                )
            faces = [
                {
                    "field": "image",
                    "box": face.face.box_ints(),
                    "detection_score": round(face.face.score, 4),
                    "faces_found": count,
                }
            ]
            extra = {"person_id": person.pk, "name": person.name, "compared_images": n}
        else:
            analysed = []
            for field in ("image1", "image2"):
                rgb = _read(data[field], field)
                # two fresh faces: both embedded with flip test-time augmentation (more accurate on LFW)
                face, count = services.main_face(rgb, flip=settings.FACE_VERIFY_FLIP_TTA)
                if face is None:
                    raise _no_face(field)
                analysed.append((field, face, count))
            similarity = float(analysed[0][1].embedding @ analysed[1][1].embedding)
            faces = [
                {"field": field, "box": face.face.box_ints(), "detection_score": round(face.face.score, 4), "faces_found": count}
                for field, face, count in analysed
            ]
            extra = {}
        return Response(
            {
                "verified": similarity >= threshold,
                "similarity": round(similarity, 4),
                "threshold": round(threshold, 4),
                "faces": faces,
                **extra,
            }
        )
