"""Edge export: the active version's TFLite embedder and label map, downloaded through the API,
reproduce the server's embeddings offline and let the example client recognize faces."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import PROBES, token_client, train_softmax_head_version

EDGE_CLIENT = Path(__file__).resolve().parent.parent / "scripts" / "edge_client.py"


@pytest.fixture
def device_api(django_user_model):
    """An edge device's account: not staff, only allowed to download model files."""
    from django.contrib.auth.models import Permission

    device = django_user_model.objects.create_user("kiosk-7", password="device-pass-123")
    device.user_permissions.add(Permission.objects.get(codename="download_modelversion"))
    return token_client(device)


def body(response) -> bytes:
    return b"".join(response.streaming_content)


def load_edge_client(monkeypatch):
    spec = importlib.util.spec_from_file_location("edge_client", EDGE_CLIENT)
    client = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "edge_client", client)  # its dataclasses look themselves up there
    spec.loader.exec_module(client)
    return client


@pytest.mark.django_db
def test_downloaded_tflite_gives_the_servers_embeddings_and_the_client_recognizes_offline(
    settings, device_api, django_capture_on_commit_callbacks, tmp_path, monkeypatch
):
    from django_q.models import Schedule

    from recognition import services as recognition
    from recognition.engine.images import decode_image
    from training import services
    from training.engine.export import TFLiteEmbedder
    from training.models import ModelVersion

    ModelVersion.objects.all().delete()
    Schedule.objects.all().delete()
    settings.TRAINING_EXPORT_TFLITE = True  # converted once per machine, then from TRAINING_CACHE_DIR
    settings.TRAINING_UNKNOWN_FACES_DIR = None
    with django_capture_on_commit_callbacks(execute=True):
        version, _ = services.request_training(ModelVersion.Trigger.API)
    version.refresh_from_db()
    assert version.status == "active", version.error

    response = device_api.get(f"/api/v1/models/{version.pk}/tflite/")
    assert response.status_code == 200
    model = body(response)
    assert hashlib.sha256(model).hexdigest() == response["X-Content-SHA256"] == version.tflite_sha256
    labels_response = device_api.get(f"/api/v1/models/{version.pk}/labels/")
    labels_bytes = body(labels_response)
    assert hashlib.sha256(labels_bytes).hexdigest() == version.labels_sha256
    labels = json.loads(labels_bytes)
    assert labels["threshold"] == pytest.approx(version.threshold) and len(labels["people"]) == 10
    assert "template" not in labels and not version.dlib_tflite  # FaceNet alone: one .tflite, as before

    # the same face crops, embedded by the server and by tf.lite.Interpreter
    crops, server = [], []
    for name in ("obama1.jpg", "johnsnow_test1.jpg", "alex_lacamoire1.jpg", "multiface.jpg"):
        for face in recognition.pipeline().analyse(decode_image((PROBES / name).read_bytes())):
            crops.append(face.crop)
            server.append(face.embedding)
    assert len(crops) >= 9
    edge = TFLiteEmbedder(model).embed(np.stack(crops))
    cosines = np.sum(edge * np.stack(server), axis=1)
    assert cosines.min() > 0.99, cosines

    # the example client, offline, from the downloaded files
    (tmp_path / "model.tflite").write_bytes(model)
    (tmp_path / "labels.json").write_bytes(labels_bytes)
    recognizer = load_edge_client(monkeypatch).EdgeRecognizer(tmp_path)
    named = [r.name for r in recognizer.recognize(decode_image((PROBES / "obama_and_biden.jpg").read_bytes()))]
    assert sorted(n for n in named if n) == ["Barack Obama", "Joe Biden"]
    strangers = recognizer.recognize(decode_image((PROBES / "multiface.jpg").read_bytes()))
    assert len(strangers) == 6 and all(r.name is None for r in strangers)


@pytest.mark.django_db
def test_download_of_a_version_without_files_is_a_clear_404(device_api):
    from training.models import ModelVersion

    version = ModelVersion.objects.create(number=ModelVersion.next_number(), status="failed")
    response = device_api.get(f"/api/v1/models/{version.pk}/tflite/")
    assert response.status_code == 404 and response.json()["error"]["code"] == "no_artifact"


@pytest.mark.django_db
def test_the_client_applies_a_softmax_head_version_offline_as_the_server_does(
    settings, device_api, django_capture_on_commit_callbacks, tmp_path, monkeypatch
):
    from recognition import services as recognition
    from recognition.engine.images import decode_image

    version = train_softmax_head_version(settings, django_capture_on_commit_callbacks, export_tflite=True)

    for name, url in (("model.tflite", "tflite"), ("labels.json", "labels")):
        response = device_api.get(f"/api/v1/models/{version.pk}/{url}/")
        assert response.status_code == 200
        (tmp_path / name).write_bytes(body(response))
    labels = json.loads((tmp_path / "labels.json").read_text())
    assert labels["matching"] == "softmax_head" and len(labels["head"]["people"]) == 10
    assert labels["head"]["threshold"] == pytest.approx(version.head_threshold)

    recognizer = load_edge_client(monkeypatch).EdgeRecognizer(tmp_path)
    rgb = decode_image((PROBES / "obama_and_biden.jpg").read_bytes())
    edge = {r.name: r.similarity for r in recognizer.recognize(rgb) if r.name}
    server = {}
    for face in recognition.recognize(rgb).faces:
        assert face.scored_by == "softmax_head"
        if face.match:
            server[face.match.name] = face.match.similarity
    assert sorted(edge) == sorted(server) == ["Barack Obama", "Joe Biden"]
    for name, probability in server.items():  # TFLite embeddings differ from the server's in the 3rd decimal
        assert edge[name] == pytest.approx(probability, abs=0.03)
    strangers = recognizer.recognize(decode_image((PROBES / "multiface.jpg").read_bytes()))
    assert len(strangers) == 6 and all(r.name is None for r in strangers)
