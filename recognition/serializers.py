from drf_spectacular.utils import extend_schema_serializer
from rest_framework import serializers


class RecognizeRequestSerializer(serializers.Serializer):
    image = serializers.FileField(
        allow_empty_file=True,
    )
    top_k = serializers.IntegerField(
        required=False, min_value=1, max_value=50, help_text="At most this many candidates per face."
    )
    threshold = serializers.FloatField(
        required=False,
        min_value=-1.0,
        max_value=1.0,
        help_text="A stricter threshold than the one in force (in the served recognizer's units); a lower one is refused.",
    )
    candidates = serializers.ChoiceField(
        choices=["matches", "all"],
        required=False,
        default="matches",
        help_text="matches: only people at or above the threshold; all (staff only): the top_k people whatever their score.",
    )


class VerifyRequestSerializer(serializers.Serializer):
    image1 = serializers.FileField(allow_empty_file=True, required=False, help_text="First photo (with image2).")
    image2 = serializers.FileField(allow_empty_file=True, required=False, help_text="Second photo (with image1).")
    image = serializers.FileField(allow_empty_file=True, required=False, help_text="A photo to check against person_id.")
    person_id = serializers.IntegerField(required=False)
    threshold = serializers.FloatField(
        required=False,
        min_value=-1.0,
        max_value=1.0,
        help_text="A stricter threshold than FACE_VERIFY_THRESHOLD; a lower one is refused.",
    )

    def validate(self, attrs):
        pair = "image1" in attrs and "image2" in attrs
        against_person = "image" in attrs and "person_id" in attrs
        if pair == against_person:
            raise serializers.ValidationError("Send either image1 and image2, or image and person_id.")
        return attrs


class CandidateSerializer(serializers.Serializer):
    person_id = serializers.IntegerField()
    name = serializers.CharField()
    similarity = serializers.FloatField(
        help_text="Cosine similarity (scored_by nearest_neighbour) or the softmax head's probability (softmax_head)"
    )


@extend_schema_serializer(component_name="RecognisedFace")  # the schema's name for it, kept for API clients
class RecognizedFaceSerializer(serializers.Serializer):
    box = serializers.ListField(child=serializers.IntegerField(), help_text="[x, y, w, h] in original image pixels")
    landmarks = serializers.DictField(child=serializers.ListField(child=serializers.FloatField()))
    detection_score = serializers.FloatField()
    match = CandidateSerializer(allow_null=True)
    candidates = CandidateSerializer(
        many=True, help_text="People at or above the threshold, best first (all top_k for staff asking candidates=all)"
    )
    margin = serializers.FloatField(allow_null=True, help_text="Best minus second-best person's similarity")
    scored_by = serializers.CharField(
        help_text="Which recognizer matched this face, nearest_neighbour or softmax_head: the active version's, "
        "or the gallery for a face closest to someone enrolled after that version was trained",
    )


class RecognizeResponseSerializer(serializers.Serializer):
    faces = RecognizedFaceSerializer(many=True)
    threshold = serializers.FloatField(
        help_text="The open-set threshold in force (cosine or probability): the served recognizer's, or a stricter one asked for"
    )
    recogniser = serializers.CharField(help_text="The active version's recognizer: nearest_neighbour or softmax_head")
    model_version = serializers.IntegerField(allow_null=True)
    embedder = serializers.CharField()
    gallery_size = serializers.IntegerField(help_text="Enrolled faces this answer was matched against")
    expected_false_accepts_per_search = serializers.FloatField(
        allow_null=True,
        help_text="Share of searches by somebody not enrolled expected to name a person at this threshold in a gallery "
        "of this size (calibrated on impostor score tails; null when a softmax head serves)",
    )
    target_false_accepts_per_search = serializers.FloatField(
        help_text="The false-accept rate per search the served threshold is set for (OPEN_SET_FAR_PER_SEARCH)"
    )


class VerifyResponseSerializer(serializers.Serializer):
    verified = serializers.BooleanField()
    similarity = serializers.FloatField()
    threshold = serializers.FloatField()
    faces = serializers.ListField(child=serializers.DictField())
    person_id = serializers.IntegerField(required=False, help_text="With image and person_id: the person compared with")
    name = serializers.CharField(
        required=False,
        allow_null=True,
        help_text="With person_id: the person's name if verified, or always for callers who may read people; else null",
    )
    compared_images = serializers.IntegerField(
        required=False,
        allow_null=True,
        help_text="With person_id: how many of the person's faces were compared, for callers who may read people; else null",
    )
