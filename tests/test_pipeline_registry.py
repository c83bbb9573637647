"""One pipeline per config: a changed FACE_* setting takes effect, the models load once."""

import numpy as np
import pytest
from django.test import override_settings

from recognition import services
from recognition.engine import pipeline as engine
from recognition.engine.images import decode_image
from recognition.engine.pipeline import PipelineConfig, shared_pipeline

from .conftest import PROBES, read


def test_a_changed_alignment_setting_changes_the_pipeline_used():
    default = services.pipeline()
    with override_settings(FACE_ALIGN_MARGIN=0.3):
        wider = services.pipeline()
        assert wider.config.align_margin == 0.3 and wider.embedder_name.endswith("box0.3")
    assert services.pipeline() is default and default.config.align_margin != 0.3
    # the cheap setting did not load the models again
    assert wider.embedder is default.embedder and wider.detector is default.detector
    # and the new margin is really used: a wider crop is another embedding of the same face
    rgb = decode_image(read(PROBES / "obama1.jpg"))
    near, far = default.analyse(rgb)[0], wider.analyse(rgb)[0]
    assert near.face.box == far.face.box
    assert 0.5 < float(near.embedding @ far.embedding) < 0.999
    assert not np.array_equal(near.crop, far.crop)


def test_a_changed_detection_setting_changes_the_detector_but_shares_the_embedder():
    default = services.pipeline()
    with override_settings(FACE_MIN_DETECTION_SCORE=0.999):
        strict = services.pipeline()
    assert strict.detector.min_score == 0.999 and strict.detector is not default.detector
    assert strict.embedder is default.embedder


def test_the_registry_keeps_a_few_pipelines_only():
    default = shared_pipeline(PipelineConfig())
    for margin in (0.11, 0.12, 0.13, 0.14):
        shared_pipeline(PipelineConfig(align_margin=margin))
    assert len(engine._registry) == engine._registry.size == 3
    assert shared_pipeline(PipelineConfig(align_margin=0.14)).config.align_margin == 0.14
    assert shared_pipeline(PipelineConfig()).embedder is default.embedder  # rebuilt around the same weights


def test_quality_rules_come_from_the_settings_not_the_pipeline():
    with override_settings(FACE_ENROLL_MIN_FACE_PX=123, FACE_ENROLL_MIN_SHARPNESS=7.5):
        rules = services.quality_rules()
    assert (rules.min_face_px, rules.min_sharpness) == (123, 7.5)
    assert not hasattr(services.pipeline().config, "quality")


@pytest.mark.django_db
def test_an_enrollment_photo_is_checked_against_the_rules_in_the_settings():
    from people.models import FaceImage
    from recognition import enrollment

    face = FaceImage.objects.filter(person__name="Barack Obama", status=FaceImage.Status.ACCEPTED).first()
    with override_settings(FACE_ENROLL_MIN_FACE_PX=5000):
        enrollment.process_face_image(face)
    assert face.status == FaceImage.Status.REJECTED and "5000 px" in face.reason
