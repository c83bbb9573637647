"""The live stream's detector (recognition/engine/stream.py) on real faces moving across 640x480 frames:
whole-frame search only every few frames, the followed face found in every frame, identities kept."""

from __future__ import annotations

import numpy as np
import pytest

from bench import frames as F
from recognition import services
from recognition.engine.stream import FaceStream, StreamSettings
from recognition.engine.tracking import FaceTracker, iou

from .conftest import PROBES, person_named

pytestmark = pytest.mark.django_db


def obama_stream(n: int, seed: int = 0) -> list[F.Frame]:
    photo = F.read_rgb(PROBES / "obama1.jpg")
    face = services.pipeline().detect(photo)[0]
    return F.stream_frames(photo, face.box, n, seed=seed)


def new_stream(**settings) -> FaceStream:
    return FaceStream(services.pipeline(), FaceTracker(reembed_every=3), StreamSettings(**settings))


def test_a_followed_face_is_found_in_every_frame_with_the_whole_frame_searched_only_every_fifth():
    frames = obama_stream(20)
    stream = new_stream(full_every=5)
    gallery, threshold = services.gallery(), services.match_threshold()
    full, embedded, track_ids = [], 0, set()
    for frame in frames:
        result = stream.process(frame.rgb, gallery, threshold)  # tracks live on: check each frame now
        assert len(result.tracks) == 1, frame.name
        assert F.hit(result.tracks[0].box, frame.boxes[0]), (frame.name, result.tracks[0].box, frame.boxes[0])
        full.append(result.full_frame)
        embedded += result.embedded
        track_ids.add(result.tracks[0].id)

    assert full == [k % 5 == 0 for k in range(20)]
    assert len(track_ids) == 1  # one face, one track all along
    assert embedded == 7  # embedded when new, then every third frame
    assert result.tracks[0].person_id == person_named("Barack Obama").pk


def test_the_region_search_finds_the_same_face_as_a_whole_frame_search():
    frames = obama_stream(12, seed=1)
    stream = new_stream(full_every=1000)
    detector = services.pipeline().detector
    for k, frame in enumerate(frames):
        near, full = stream.detect(frame.rgb)
        stream.tracker.update([f.box for f in near], [f.landmarks for f in near])
        assert full == (k == 0)  # the first frame is searched whole, then the region around the face
        whole = detector.detect(frame.rgb, min_face_size=40)
        assert len(near) == len(whole) == 1
        # MTCNN boxes shift a little with the pyramid levels searched (as between min face 20 and 40)
        assert iou(near[0].box, whole[0].box) > 0.8
        assert np.abs(near[0].landmarks - whole[0].landmarks).max() < 0.05 * whole[0].box[2]


def test_a_face_walking_into_an_empty_frame_is_found_at_once_and_a_second_within_the_full_search_period():
    frames = obama_stream(16, seed=2)
    empty = F.background(np.random.default_rng(0))
    stream = new_stream(full_every=5)
    gallery, threshold = services.gallery(), services.match_threshold()

    # nobody in front of the camera: every frame is searched whole, so an arrival is seen at once
    for _ in range(3):
        assert stream.process(empty, gallery, threshold).full_frame
    assert len(stream.process(frames[0].rgb, gallery, threshold).tracks) == 1

    # a second person steps in beside the first while only the first is followed
    second = F.read_rgb(PROBES / "alex_lacamoire1.jpg")
    box = services.pipeline().detect(second)[0].box
    head = F.stream_frames(second, box, 1, face_px=90)[0]
    x, y, w, h = (int(v) for v in head.boxes[0])
    crop = head.rgb[max(0, y - h // 2) : y + h + h // 2, max(0, x - w // 2) : x + w + w // 2]
    seen = []
    for frame in frames[1:11]:
        rgb = frame.rgb.copy()
        rgb[480 - crop.shape[0] :, 640 - crop.shape[1] :] = crop  # bottom right corner, away from the first face
        seen.append(len(stream.process(rgb, gallery, threshold).tracks))
    assert max(seen) == 2
    assert seen.index(2) < 5  # within one whole-frame search period
