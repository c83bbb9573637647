"""People and their face images over the API (staff write; staff or an explicit read role read)."""

from django.db.models import Count, Q
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.response import Response

from facesite.api import ApiError, IsStaffOrReadRole, StaffHoldsPermission, image_error
from privacy.services import erase_person
from recognition.engine.images import ImageError
from security.permissions import TokenScope
from security.throttling import scoped_throttle

from . import services
from .models import FaceImage, Person
from .serializers import FaceImageSerializer, FaceUploadSerializer, PersonSerializer


class PersonViewSet(viewsets.ModelViewSet):
    serializer_class = PersonSerializer
    permission_classes = [IsStaffOrReadRole, StaffHoldsPermission, TokenScope]
    staff_permissions = {"DELETE": "people.delete_person"}  # an erasure, as in the admin
    token_scope_read, token_scope_write = "read", "enroll"
    read_permission = "people.view_person"
    parser_classes = [JSONParser, FormParser, MultiPartParser]

    def get_queryset(self):
        return Person.objects.order_by("name", "id").annotate(
            face_count=Count("faces"), accepted_face_count=Count("faces", filter=Q(faces__status=FaceImage.Status.ACCEPTED))
        )

    def perform_destroy(self, instance):
        erase_person(instance, by=self.request.user)  # everywhere they are held


class FaceImageViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet):
    serializer_class = FaceImageSerializer
    permission_classes = [IsStaffOrReadRole, TokenScope]
    token_scope_read, token_scope_write = "read", "enroll"
    read_permission = "people.view_faceimage"
    parser_classes = [MultiPartParser, FormParser]

    def person(self) -> Person:
        return get_object_or_404(Person, pk=self.kwargs["person_pk"])

    def get_queryset(self):
        return FaceImage.objects.filter(person=self.person())

    def get_throttles(self):
        if self.request.method == "POST":  # a photo stored, decoded, detected and embedded
            return [*super().get_throttles(), scoped_throttle("enroll")()]
        return super().get_throttles()

    @extend_schema(request=FaceUploadSerializer, responses={201: FaceImageSerializer})
    def create(self, request, person_pk=None):
        person = self.person()
        upload = FaceUploadSerializer(data=request.data)
        upload.is_valid(raise_exception=True)
        data = upload.validated_data
        try:
            chosen = services.chosen_face_box(data["image"], data.get("face_index"), data.get("box"))
            face = services.enroll(person, data["image"], uploaded_by=request.user, chosen_box=chosen)
        except ImageError as err:
            raise image_error(err, "image")
        except services.FaceChoiceError as err:
            raise ApiError(err.code, err.message)
        except services.PersonGone:
            # erased by another request while this photo was checked: nothing was stored
            raise ApiError("not_found", "This person was erased while the photo was being stored; nothing was stored.", 404)
        face.refresh_from_db()
        return Response(self.get_serializer(face).data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance):
        services.delete_face(instance)
