"""The edge kiosk (edge/): offline check-ins uploaded exactly once, model pairs swapped only when
verified, and the server's side of it (POST /api/v1/checkins/, /api/v1/edge/manifest/ and gallery/)."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from .conftest import PROBES, person_named
from .test_erasure import session_files_restored  # noqa: F401  (an erasure here deletes real files)

ROOT = Path(__file__).resolve().parent.parent


def key_client(raw: str):
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    return client


def through_test_client(api):
    """The edge client's ``Server`` with requests and downloads sent through a DRF test client: the
    transport only, the views and the client code are real."""
    from edge.sync import Server, SyncError, check_refused, private_file

    class ThroughTestClient(Server):
        def request(self, path_or_url: str, method: str = "GET", body: dict | None = None) -> tuple[int, bytes]:
            path = path_or_url.removeprefix("http://testserver")
            response = api.generic(method, path, json.dumps(body) if body is not None else "", content_type="application/json")
            return response.status_code, b"".join(response.streaming_content) if response.streaming else response.content

        def download(self, url: str, target: Path) -> str:
            code, data = self.request(url)
            check_refused(code, data, url)
            if code != 200:
                raise SyncError(f"{url}: HTTP {code}")
            with os.fdopen(private_file(target), "wb") as out:  # made as Server.download makes it
                out.write(data)
            return hashlib.sha256(data).hexdigest()

    return ThroughTestClient("http://testserver", "unused")


@pytest.fixture
def kiosk_api(kiosk, staff_user):
    from security.models import ApiKey

    _, raw = ApiKey.issue(staff_user, "front door edge", role="kiosk", kiosk=kiosk)
    return key_client(raw)


@pytest.fixture
def client_key_api(plain_user):
    from security.models import ApiKey

    _, raw = ApiKey.issue(plain_user, "integration", role="client")
    return key_client(raw)


def served_notice() -> str:
    """The notice version the server serves now (CONSENT_NOTICE_VERSION and its text's digest)."""
    from checkin.edge_api import notice_version

    return notice_version()


def checkin_body(**overrides) -> dict:
    body = {
        "client_id": str(uuid.uuid4()),
        "person_id": person_named("Barack Obama").pk,
        # now, on a device one hour east of UTC: a check-in is refused outside the retention period
        "checked_in_at": datetime.now(timezone(timedelta(hours=1))).isoformat(),
        "similarity": 0.81,
        "threshold": 0.55,
        "frames": 4,
        "model_version": None,
        "notice_version": served_notice(),
    }
    body.update(overrides)
    return body


def names_checked_in(recognizer, rgb) -> set[str]:
    """Whom the edge recognizer checks in from 8 frames of one photo."""
    names = set()
    for _ in range(8):
        _, ready = recognizer.process(rgb)
        for track in ready:
            track.checked_in = True
            names.add(recognizer.name(track.person_id))
    return names


# ---- POST /api/v1/checkins/ -----------------------------------------------------------------------


@pytest.mark.django_db
def test_a_kiosk_key_uploads_a_check_in_once_however_often_it_retries(kiosk_api, kiosk):
    from checkin.models import CheckIn

    body = checkin_body()
    first = kiosk_api.post("/api/v1/checkins/", body, format="json")
    assert first.status_code == 201, first.content
    again = kiosk_api.post("/api/v1/checkins/", body, format="json")
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    rows = CheckIn.objects.filter(client_id=body["client_id"])
    assert rows.count() == 1
    row = rows.get()
    assert row.time_source == "device" and row.kiosk == kiosk and row.person.name == "Barack Obama"
    assert row.checked_in_at == datetime.fromisoformat(body["checked_in_at"])  # the device's time, kept
    assert row.consent.notice_version == body["notice_version"] and row.consent.kiosk == kiosk
    assert first.json()["time_source"] == "device" and first.json()["device"] == "kiosk: Front door"


@pytest.mark.django_db
def test_a_client_key_and_a_plain_users_token_cannot_upload_check_ins(client_key_api, user_api):
    from checkin.models import CheckIn

    for api in (client_key_api, user_api):
        response = api.post("/api/v1/checkins/", checkin_body(), format="json")
        assert response.status_code == 403 and "error" in response.json()
    assert not CheckIn.objects.filter(time_source="device").exists()


@pytest.mark.django_db
def test_a_kiosk_key_still_cannot_list_check_ins(kiosk_api):
    assert kiosk_api.get("/api/v1/checkins/").status_code == 403


@pytest.mark.django_db
@pytest.mark.parametrize(
    "change, field",
    [
        ({"client_id": "not-a-uuid"}, "client_id"),
        ({"person_id": 999999}, "person_id"),
        ({"checked_in_at": "yesterday"}, "checked_in_at"),
        ({"similarity": 3}, "similarity"),
        ({"frames": 0}, "frames"),
        ({"notice_version": None}, "notice_version"),
    ],
)
def test_a_bad_check_in_body_is_a_400_in_the_error_shape(kiosk_api, change, field):
    response = kiosk_api.post("/api/v1/checkins/", checkin_body(**change), format="json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] and error["message"] and field in error["fields"]


@pytest.mark.django_db
def test_a_client_id_used_by_another_kiosk_is_a_conflict(kiosk_api, staff_user):
    from checkin.models import CheckIn, Kiosk
    from security.models import ApiKey

    other = Kiosk(name="Back door")
    other.set_new_token()
    other.save()
    _, raw = ApiKey.issue(staff_user, "back door edge", role="kiosk", kiosk=other)
    body = checkin_body()
    assert kiosk_api.post("/api/v1/checkins/", body, format="json").status_code == 201
    response = key_client(raw).post("/api/v1/checkins/", body, format="json")
    assert response.status_code == 409 and response.json()["error"]["code"] == "client_id_taken"
    assert CheckIn.objects.filter(client_id=body["client_id"]).count() == 1


# ---- /api/v1/edge/: manifest, gallery delta, model files ------------------------------------------


@pytest.mark.django_db
def test_the_manifest_names_the_active_files_the_notice_and_the_check_in_rule(kiosk_api, client_key_api, settings):
    from django.core.files.base import ContentFile

    from training.models import ModelVersion

    ModelVersion.objects.all().delete()
    labels = json.dumps({"version": 1, "people": []}).encode()
    version = ModelVersion.objects.create(number=1, status="active", labels_sha256=hashlib.sha256(labels).hexdigest())
    version.labels.save("labels.json", ContentFile(labels), save=False)
    version.tflite.save("model.tflite", ContentFile(b"tflite bytes"), save=False)
    version.tflite_sha256 = hashlib.sha256(b"tflite bytes").hexdigest()
    version.save()

    manifest = kiosk_api.get("/api/v1/edge/manifest/").json()
    assert manifest["model"]["number"] == 1 and manifest["model"]["labels_sha256"] == version.labels_sha256
    assert manifest["kiosk"] == "Front door"
    assert manifest["consent"]["notice_version"] == served_notice()
    assert manifest["consent"]["notice_version"].startswith(settings.CONSENT_NOTICE_VERSION + "+")
    assert "never saved" in manifest["consent"]["text"] and "<" not in manifest["consent"]["text"]
    assert manifest["checkin"]["stable_frames"] == settings.CHECKIN_STABLE_FRAMES
    assert "dlib_tflite_url" not in manifest["model"]  # a FaceNet site's manifest: one .tflite, as before
    # the kiosk key downloads both files (edge_sync scope); a client key does not
    for url in (manifest["model"]["tflite_url"], manifest["model"]["labels_url"]):
        response = kiosk_api.get(url)
        assert response.status_code == 200, response.content
        assert response["X-Content-SHA256"] in (version.tflite_sha256, version.labels_sha256)
        assert client_key_api.get(url).status_code == 403
    assert client_key_api.get("/api/v1/edge/manifest/").status_code == 403


@pytest.mark.django_db
def test_the_gallery_delta_gives_changes_since_the_cursor_and_the_people_whose_faces_left(kiosk_api, client_key_api):
    import base64

    import numpy as np

    from people.models import FaceImage

    full = kiosk_api.get("/api/v1/edge/gallery/", {"pages": 1}).json()
    in_gallery = set(FaceImage.objects.in_gallery().values_list("id", flat=True))
    assert full["full"] is full["start"] is True and full["more"] is False
    assert {f["id"] for f in full["faces"]} == in_gallery and "ids" not in full  # no id list of the whole gallery
    vector = np.frombuffer(base64.b64decode(full["faces"][0]["embedding"]), "<f4")
    assert vector.shape == (128,) and abs(np.linalg.norm(vector) - 1) < 1e-3 and full["dim"] == 128

    nothing = kiosk_api.get("/api/v1/edge/gallery/", {"pages": 1, "since": full["cursor"]}).json()
    assert nothing["faces"] == [] and nothing["people"] == [] and nothing["full"] is nothing["more"] is False

    removed = FaceImage.objects.in_gallery().filter(person__name="Joe Biden").first()
    removed.status = FaceImage.Status.REJECTED
    removed.save()
    changed = FaceImage.objects.in_gallery().filter(person__name="Barack Obama").first()
    changed.save()
    delta = kiosk_api.get("/api/v1/edge/gallery/", {"pages": 1, "since": full["cursor"]}).json()
    bidens = set(FaceImage.objects.in_gallery().filter(person=removed.person).values_list("id", flat=True))
    assert delta["people"] == [removed.person_id]  # drop his faces, then take these: all but the rejected one
    assert {f["id"] for f in delta["faces"]} == bidens | {changed.pk} and removed.pk not in bidens

    assert kiosk_api.get("/api/v1/edge/gallery/", {"pages": 1, "since": "soon"}).json()["error"]["code"] == "invalid"
    assert client_key_api.get("/api/v1/edge/gallery/").status_code == 403


def test_a_new_notice_version_asks_for_consent_again_before_the_camera(tmp_path):
    from edge.kiosk import ensure_consent
    from edge.sync import State

    state = State(tmp_path)
    with pytest.raises(SystemExit, match="sync"):  # no notice fetched yet: nothing to consent to
        ensure_consent(state, given_by_flag=True, interactive=False)
    state.write({"consent": {"notice_version": "v2", "min_age": 16, "text": "Before we use your camera"}}, "manifest.json")
    state.update(consent={"notice_version": "v1", "given_at": "2026-11-01T09:00:00+00:00"})
    with pytest.raises(SystemExit, match="--consent"):
        ensure_consent(state, given_by_flag=False, interactive=False)
    consent = ensure_consent(state, given_by_flag=True, interactive=False)
    assert consent["notice_version"] == "v2" and state.read()["consent"] == consent
    assert consent["method"] == "operator_flag" and consent["age_confirmed"] is False  # nobody was asked
    assert ensure_consent(state, given_by_flag=False, interactive=False) == consent  # remembered


def test_window_mode_without_an_opencv_gui_stops_with_a_clear_message():
    import cv2

    from edge.kiosk import check_window_support

    try:
        cv2.namedWindow("probe")
        cv2.destroyWindow("probe")
    except cv2.error:
        with pytest.raises(SystemExit, match="--headless.*opencv-python"):
            check_window_support()
    else:
        pytest.fail("this OpenCV has a GUI; the repository installs opencv-contrib-python-headless, which has none")


@pytest.mark.django_db
def test_the_gallery_delta_lets_the_kiosk_recognize_someone_enrolled_after_the_version(kiosk_api, settings, tmp_path):
    """A label map that knows only Barack Obama, plus the gallery delta (which has Joe Biden): the
    kiosk checks Biden in by the server's multi-frame rule; with the label map alone he is unknown."""
    import os

    import numpy as np

    from edge.recognizer import EdgeRecognizer
    from edge.sync import State, sync_gallery
    from people.models import FaceImage
    from recognition import services as recognition
    from recognition.engine.facenet import WEIGHTS_SHA256
    from recognition.engine.images import decode_image
    from training.engine.export import cached_embedder_tflite

    pipe = recognition.pipeline()
    pair = tmp_path / "pair"
    pair.mkdir()
    model = cached_embedder_tflite(pipe.embedder.model, WEIGHTS_SHA256, settings.TRAINING_CACHE_DIR, flip=pipe.embedder.flip)
    os.symlink(model, pair / "model.tflite")
    obama, biden = person_named("Barack Obama"), person_named("Joe Biden")
    vectors = [np.frombuffer(bytes(f.embedding), np.float32) for f in FaceImage.objects.in_gallery().filter(person=obama)]
    labels = {
        "version": 7,
        "matching": "nearest_neighbour",
        "threshold": settings.FACE_MATCH_THRESHOLD,
        "alignment": {"method": pipe.config.align_method, "margin": pipe.config.align_margin, "size": 160},
        "people": [{"index": 0, "person_id": obama.pk, "name": obama.name}],
        "gallery": {"labels": [0] * len(vectors), "embeddings": np.asarray(vectors).tolist()},
    }
    (pair / "labels.json").write_text(json.dumps(labels))
    state = State(tmp_path / "state")
    assert sync_gallery(through_test_client(kiosk_api), state) > 0
    rule = {"stable_frames": settings.CHECKIN_STABLE_FRAMES, "reembed_every": 3, "full_frame_every": 5, "min_face_px": 40}
    rgb = decode_image((PROBES / "obama_and_biden.jpg").read_bytes())

    def checked_in(gallery) -> set[str]:
        return names_checked_in(EdgeRecognizer(pair, gallery, state.read().get("names", {}), rule), rgb)

    assert checked_in(state.gallery()) == {"Barack Obama", "Joe Biden"}
    assert checked_in(None) == {"Barack Obama"}
    assert biden.pk in set(state.gallery()[1].tolist())


# ---- the client against a real server --------------------------------------------------------------


def edge_command(site_url: str, key: str, state: Path, *args: str) -> list[str]:
    from .live import PYTHON

    return [PYTHON, "-m", "edge", "--server", site_url, "--key", key, "--state-dir", str(state), *args]


def edge_options(state: Path) -> dict:
    env = {"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": "1", "HOME": str(state)}
    return {"cwd": ROOT, "env": env, "text": True, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}


def edge(site_url: str, key: str, state: Path, *args: str, timeout: float = 600) -> tuple[int, list[dict], str]:
    """Run `python -m edge ...` as the device would; returns (exit code, JSON lines, stderr)."""
    proc = subprocess.run(edge_command(site_url, key, state, *args), timeout=timeout, **edge_options(state))
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc.returncode, lines, proc.stderr


def write_video(path: Path, photo: Path, frames: int = 12) -> Path:
    """A short clip of one still photo (enough frames for the multi-frame rule)."""
    import cv2

    image = cv2.imread(str(photo))
    height, width = (image.shape[0] // 2) * 2, (image.shape[1] // 2) * 2
    image = image[:height, :width]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (width, height))
    assert writer.isOpened()
    for _ in range(frames):
        writer.write(image)
    writer.release()
    return path


def shell(site, code: str, **env) -> str:
    """The last line the code printed in `manage.py shell` on the site (the shell may print a banner first)."""
    try:
        out = site.manage("shell", "-c", code, env=site.with_env(**env) if env else None, timeout=1200).stdout
    except subprocess.CalledProcessError as err:
        raise AssertionError(f"manage.py shell failed:\n{err.stderr[-3000:]}") from None
    return out.strip().splitlines()[-1]


@pytest.mark.servers
@pytest.mark.django_db
def test_the_kiosk_checks_in_offline_uploads_once_and_follows_the_active_model(live_site, tmp_path):
    from . import live

    site = live_site
    training = {"Q_SYNC": "1", "TRAINING_APPROACHES": "nearest_neighbour", "TRAINING_UNKNOWN_FACES_DIR": ""}
    # two usable versions with TFLite files, whatever other tests of the shared site left behind
    usable = "V.objects.filter(status__in=['ready', 'active', 'retired']).exclude(tflite='').order_by('-number')"
    wanted = 2 - int(shell(site, f"from training.models import ModelVersion as V; print(min(2, {usable}.count()))"))
    for _ in range(wanted):  # the TFLite conversion is cached in TRAINING_CACHE_DIR
        site.manage("train_model", "--force", env=site.with_env(**training), timeout=1800)
    numbers = json.loads(
        shell(
            site,
            "import json; from training.models import ModelVersion as V; from training import services; "
            f"v2, v1 = {usable}[:2]; services.activate(v1); "
            "print(json.dumps({'v1': v1.number, 'v2': v2.number, 'v2_id': v2.pk, "
            "'v2_labels': v2.labels.path, 'tflite': bool(v1.tflite and v2.tflite)}))",
        )
    )
    assert numbers["tflite"], "training did not export TFLite files"
    raw_key = shell(
        site,
        "from django.contrib.auth import get_user_model; from checkin.models import Kiosk; "
        "from security.models import ApiKey; k = Kiosk(name='Edge lobby'); k.set_new_token(); k.save(); "
        "print(ApiKey.issue(get_user_model().objects.get(username='live-staff'), 'lobby edge', role='kiosk', kiosk=k)[1])",
    )
    state = tmp_path / "kiosk"
    video = write_video(tmp_path / "obama.avi", PROBES / "obama1.jpg")  # a held-out photo of an enrolled person

    web = site.start_web()
    try:
        code, lines, err = edge(web.url, raw_key, state, "sync")
        assert code == 0 and lines[-1]["version"] == numbers["v1"], err
        obama = [
            p["person_id"]
            for p in json.loads(next((state / "pairs").glob("v*/labels.json")).read_text())["people"]
            if p["name"] == "Barack Obama"
        ][0]
    finally:
        site.stop(web.proc)
    port = int(web.url.rsplit(":", 1)[1])

    # no consent on this device yet: the camera (here the video) is not opened
    code, lines, err = edge(web.url, raw_key, state, "run", "--video", str(video), "--headless")
    assert code != 0 and "--consent" in err and not [line for line in lines if line["type"] == "frame"]

    # the server is stopped: the kiosk recognizes, checks in and queues it
    code, lines, err = edge(web.url, raw_key, state, "run", "--video", str(video), "--headless", "--consent", "--sync-every", "0")
    assert code == 0, err
    assert any(line["type"] == "offline" for line in lines)
    checkins = [line for line in lines if line["type"] == "checkin"]
    assert [c["person_id"] for c in checkins] == [obama], lines
    assert checkins[0]["frames"] >= 4 and checkins[0]["model_version"] == numbers["v1"]
    assert any(f["name"] == "Barack Obama" for line in lines if line["type"] == "frame" for f in line["faces"])
    assert lines[-1] == {"type": "end", "frames": 12, "pending": 1, "version": numbers["v1"]}
    assert not list(tmp_path.rglob("*.jpg")) and not list(tmp_path.rglob("*.png"))  # no frame written

    web = site.start_web(port=port)
    try:
        code, lines, err = edge(web.url, raw_key, state, "upload")
        assert code == 0 and [(u["status"], u["client_id"]) for u in lines] == [(201, checkins[0]["client_id"])], err
        # the answer lost, the device retries: the server returns the same row
        with sqlite3.connect(state / "outbox.sqlite3") as db:
            db.execute("INSERT INTO pending (client_id, body) VALUES (?, ?)", (checkins[0]["client_id"], json.dumps(checkins[0])))
        code, lines, err = edge(web.url, raw_key, state, "upload")
        assert code == 0 and [u["status"] for u in lines] == [200], err
        listed = live.request(web.url + "/api/v1/checkins/?date=all", headers=web.auth()).json()
        listed = listed["results"] if isinstance(listed, dict) else listed
        rows = [r for r in listed if r["client_id"] == checkins[0]["client_id"]]
        assert len(rows) == 1 and rows[0]["time_source"] == "device" and rows[0]["device"] == "kiosk: Edge lobby"
        assert datetime.fromisoformat(rows[0]["checked_in_at"]) == datetime.fromisoformat(checkins[0]["checked_in_at"])
        assert edge(web.url, raw_key, state, "status")[1][0]["pending"] == 0

        # v2 is activated, but its label map on the server is corrupted: the kiosk keeps v1
        labels_path = Path(numbers["v2_labels"])
        good = labels_path.read_bytes()
        labels_path.write_bytes(good.replace(b'"threshold"', b'"threshold" ', 1))
        reply = live.request(web.url + f"/api/v1/models/{numbers['v2_id']}/activate/", "POST", headers=web.auth())
        assert reply.status == 200, reply.body
        before = {p.parent.name: p.read_bytes() for p in (state / "pairs").glob("v*/labels.json")}
        code, lines, err = edge(web.url, raw_key, state, "sync")
        assert code == 1 and lines[-1]["type"] == "sync_error" and "sha256" in lines[-1]["error"], (lines, err)
        status = edge(web.url, raw_key, state, "status")[1][0]
        assert status["version"] == numbers["v1"] and status["pair"] in before
        assert {p.parent.name: p.read_bytes() for p in (state / "pairs").glob("v*/labels.json")} == before
        assert not list((state / "pairs").glob(".partial-*"))

        # a running kiosk meets the bad file too and keeps recognizing with v1; once the file is
        # repaired, its next sync picks v2 up by itself
        errors = open(tmp_path / "kiosk-stderr.txt", "w")  # noqa: SIM115 (a file, not a pipe: it cannot fill up)
        kiosk = subprocess.Popen(
            edge_command(web.url, raw_key, state, "run", "--video", str(video), "--headless", "--sync-every", "0"),
            **{**edge_options(state), "stderr": errors},
        )
        lines = []
        for text in kiosk.stdout:
            if text.startswith("{"):
                lines.append(json.loads(text))
                if lines[-1]["type"] == "sync_error" and labels_path.read_bytes() != good:
                    labels_path.write_bytes(good)
        assert kiosk.wait(60) == 0, (tmp_path / "kiosk-stderr.txt").read_text()
        errors.close()
        kinds = [line["type"] for line in lines]
        assert kinds.index("sync_error") < kinds.index("frame"), lines
        first_frame = next(line for line in lines if line["type"] == "frame")
        assert first_frame["version"] == numbers["v1"]
        reloads = [line for line in lines if line["type"] == "sync" and line.get("reloaded")]
        assert reloads and reloads[0]["version"] == numbers["v2"], lines
        assert lines[-1]["version"] == numbers["v2"] and lines[-1]["pending"] == 0
        assert edge(web.url, raw_key, state, "status")[1][0]["version"] == numbers["v2"]
    finally:
        site.stop(web.proc)


@pytest.mark.django_db
def test_an_uploaded_check_in_is_announced_once_with_the_devices_time(kiosk_api, settings, django_capture_on_commit_callbacks):
    from .test_integrations import Receiver, verified, webhook_to

    settings.WEBHOOK_ALLOW_PRIVATE = True
    device_time = datetime.now(timezone(timedelta(hours=1))).replace(microsecond=123456)
    with Receiver() as receiver:
        webhook_to(receiver, "checkin.created")
        # made under the notice that names the connected systems (the webhook changed its text)
        body = checkin_body(checked_in_at=device_time.isoformat())
        for _ in range(2):  # the kiosk retries: one check-in, one event
            with django_capture_on_commit_callbacks(execute=True):
                assert kiosk_api.post("/api/v1/checkins/", body, format="json").status_code in (200, 201)
    ((headers, raw),) = receiver.requests
    assert verified(headers, raw)
    sent = json.loads(raw)["data"]
    assert sent["person"]["name"] == "Barack Obama" and sent["time_source"] == "device"
    assert datetime.fromisoformat(sent["checked_in_at"]) == device_time  # the device's time
    assert sent["checked_in_at"].startswith(device_time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S"))  # in UTC


@pytest.mark.django_db
def test_after_an_erasure_the_kiosks_next_sync_leaves_nothing_of_the_person_on_the_device(
    kiosk_api, staff_api, settings, django_capture_on_commit_callbacks, tmp_path
):
    """The erasure rewrites the active version's label map (same version, new sha256) and drops the
    person from the gallery: the kiosk replaces its pair, deletes the old one and forgets the name."""
    import numpy as np

    from edge.sync import State, sync
    from people.models import FaceImage
    from training import services
    from training.models import ModelVersion

    ModelVersion.objects.all().delete()
    settings.TRAINING_RECOGNIZER = "nearest_neighbour"
    with django_capture_on_commit_callbacks(execute=True):
        version, _ = services.request_training("api", force_activate=True)
    assert ModelVersion.objects.get(pk=version.pk).status == "active"
    obama = person_named("Barack Obama")
    theirs = [bytes(f.embedding) for f in FaceImage.objects.filter(person=obama)]
    state = State(tmp_path / "kiosk")
    server = through_test_client(kiosk_api)
    sync(server, state)
    first_pair = state.pair_dir

    def device_files() -> dict[Path, bytes]:
        return {p: p.read_bytes() for p in state.root.rglob("*") if p.is_file()}

    def held(files: dict[Path, bytes]) -> list[Path]:
        """Files holding his name, or one of his embeddings (raw, or as the label map's numbers)."""
        vectors = [np.frombuffer(e, np.float32) for e in theirs]
        found = []
        for path, data in files.items():
            if b"Barack Obama" in data or any(e in data for e in theirs):
                found.append(path)
            elif path.name == "labels.json":
                rows = np.asarray(json.loads(data)["gallery"]["embeddings"], np.float32)
                if any(np.abs(rows - v).max(axis=1).min() < 1e-5 for v in vectors):
                    found.append(path)
        return found

    assert held(device_files())  # before: his name and embeddings are on the device
    with django_capture_on_commit_callbacks(execute=True):
        assert staff_api.delete(f"/api/v1/people/{obama.pk}/").status_code == 204
    report = sync(server, state)
    assert report["model_changed"] and report["version"] == version.number  # the same version, its map rewritten
    assert not first_pair.exists() and [p.name for p in (state.root / "pairs").iterdir()] == [state.pair_dir.name]
    assert held(device_files()) == []
    assert str(obama.pk) not in state.read()["names"] and state.read()["names"]  # the others' names stay


@pytest.mark.django_db
def test_a_check_in_waiting_on_the_device_for_a_person_erased_meanwhile_is_dropped_not_kept(
    kiosk_api, staff_api, django_capture_on_commit_callbacks, tmp_path
):
    from checkin.models import CheckIn
    from edge.outbox import Outbox

    obama, biden = person_named("Barack Obama"), person_named("Joe Biden")
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    for person in (obama, biden):  # recorded offline, with the name the kiosk showed
        outbox.add(checkin_body(person_id=person.pk, name=person.name, checked_in_at=datetime.now().astimezone().isoformat()))
    with django_capture_on_commit_callbacks(execute=True):
        assert staff_api.delete(f"/api/v1/people/{obama.pk}/").status_code == 204
    reports = outbox.upload(through_test_client(kiosk_api))
    assert sorted(str(r.get("dropped", r["status"])) for r in reports) == ["201", "unknown_person"]
    assert outbox.pending() == [] and CheckIn.objects.filter(person=biden).count() == 1
    assert not outbox.checked_in_recently(obama.pk, timedelta(days=1)) and outbox.checked_in_recently(biden.pk, timedelta(days=1))
    outbox.close()
    assert b"Barack Obama" not in (tmp_path / "outbox.sqlite3").read_bytes()  # not even in a free page


def test_the_kiosks_record_of_who_checked_in_is_kept_only_for_the_repeat_window(tmp_path):
    from datetime import UTC

    from edge.outbox import Outbox

    outbox = Outbox(tmp_path / "outbox.sqlite3")
    now = datetime.now(UTC)
    outbox.add({"client_id": "old", "person_id": 7, "checked_in_at": (now - timedelta(hours=3)).isoformat()})
    outbox.add({"client_id": "new", "person_id": 8, "checked_in_at": (now - timedelta(minutes=5)).isoformat()})
    assert outbox.checked_in_recently(8, timedelta(minutes=30)) and not outbox.checked_in_recently(7, timedelta(minutes=30))
    assert [row[0] for row in outbox.db.execute("SELECT person_id FROM recent")] == [8]  # the older one is gone
    assert len(outbox.pending()) == 2  # uploads are not the window's business


@pytest.mark.django_db
def test_the_dlib_model_download_is_for_kiosk_keys_and_staff_and_a_facenet_version_has_none(kiosk_api, client_key_api, staff_api):
    from rest_framework.test import APIClient

    from training.models import ModelVersion

    version = ModelVersion.objects.create(number=ModelVersion.next_number(), status="ready")
    url = f"/api/v1/models/{version.pk}/dlib-tflite/"
    assert APIClient().get(url).status_code == 401
    assert client_key_api.get(url).status_code == 403
    for api in (kiosk_api, staff_api):  # allowed, but a FaceNet version exported no dlib network
        response = api.get(url)
        assert response.status_code == 404 and response.json()["error"]["code"] == "no_artifact", response.content


@pytest.mark.django_db
def test_two_consents_stored_by_racing_uploads_do_not_block_the_sessions_later_uploads(kiosk_api, kiosk, settings):
    """Two uploads of one device session racing may both store its consent (nothing makes it
    unique): the later uploads of that session are still stored, linked to the oldest."""
    from checkin.models import CheckIn, Consent

    given = "2026-11-30T08:00:00+01:00"
    first, second = (
        Consent.objects.create(
            purpose="checkin",
            kiosk=kiosk,
            user=None,
            notice_version=served_notice(),
            given_at=given,
            method="operator_flag",
            age_confirmed=False,
        )
        for _ in range(2)
    )
    body = checkin_body(consent_given_at=given, consent_method="operator_flag", age_confirmed=False)
    response = kiosk_api.post("/api/v1/checkins/", body, format="json")
    assert response.status_code == 201, response.content
    assert CheckIn.objects.get(pk=response.json()["id"]).consent == first
    assert Consent.objects.filter(given_at=given).count() == 2


@pytest.mark.django_db
def test_a_raced_upload_that_is_not_stored_leaves_no_consent(kiosk_api, kiosk, monkeypatch):
    """The same upload twice at once: the second's insert fails on client_id and it answers with
    the first's row; the consent it would have stored for a new session goes with its insert."""
    from checkin import services
    from checkin.models import Consent

    body = checkin_body(consent_given_at="2026-11-30T06:00:00+01:00")
    assert kiosk_api.post("/api/v1/checkins/", body, format="json").status_code == 201
    Consent.objects.filter(given_at=body["consent_given_at"]).delete()  # as if the first had not stored it yet
    before = Consent.objects.count()
    looked = services._existing
    calls = iter([None])  # the second request looked before the first's row was committed
    monkeypatch.setattr(services, "_existing", lambda *args: next(calls, looked(*args)))
    again = kiosk_api.post("/api/v1/checkins/", body, format="json")
    assert again.status_code == 200, again.content
    assert Consent.objects.count() == before


@pytest.mark.django_db
@pytest.mark.parametrize("version", [0, -3, int("9" * 200)])
def test_a_model_version_out_of_range_is_a_400(kiosk_api, version):
    from checkin.models import CheckIn

    response = kiosk_api.post("/api/v1/checkins/", checkin_body(model_version=version), format="json")
    assert response.status_code == 400, response.content
    assert "model_version" in response.json()["error"]["fields"]
    assert not CheckIn.objects.filter(time_source="device").exists()


@pytest.mark.django_db
def test_a_deactivated_kiosks_key_is_refused_on_every_edge_endpoint(kiosk_api, kiosk):
    from django.core.files.base import ContentFile

    from checkin.models import CheckIn
    from training.models import ModelVersion

    version = ModelVersion.objects.create(number=ModelVersion.next_number(), status="ready")
    version.labels.save("labels.json", ContentFile(b'{"people": []}'))
    edge_calls = {
        "manifest": lambda: kiosk_api.get("/api/v1/edge/manifest/"),
        "gallery": lambda: kiosk_api.get("/api/v1/edge/gallery/"),
        "labels": lambda: kiosk_api.get(f"/api/v1/models/{version.pk}/labels/"),
        "tflite": lambda: kiosk_api.get(f"/api/v1/models/{version.pk}/tflite/"),
        "dlib-tflite": lambda: kiosk_api.get(f"/api/v1/models/{version.pk}/dlib-tflite/"),
        "check-in upload": lambda: kiosk_api.post("/api/v1/checkins/", checkin_body(), format="json"),
    }
    assert kiosk_api.get(f"/api/v1/models/{version.pk}/labels/").status_code == 200  # while the kiosk is active

    kiosk.is_active = False  # staff withdraw a stolen kiosk
    kiosk.save()
    answers = {name: call() for name, call in edge_calls.items()}
    assert {name: r.status_code for name, r in answers.items()} == dict.fromkeys(edge_calls, 403)
    assert all(r.json()["error"]["code"] == "permission_denied" for r in answers.values())
    assert not CheckIn.objects.filter(kiosk=kiosk).exists()


# ---- a deactivated person (DPO audit gap 5) -------------------------------------------------------


def deactivate(person) -> None:
    from people.models import Person

    Person.objects.filter(pk=person.pk).update(is_active=False)  # no signal: the retrain it queues is not this test's


@pytest.mark.django_db
def test_a_deactivated_persons_check_in_is_refused_and_the_kiosk_drops_it(kiosk_api, tmp_path):
    from checkin.models import CheckIn
    from edge.outbox import Outbox

    obama, biden = person_named("Barack Obama"), person_named("Joe Biden")
    deactivate(obama)
    response = kiosk_api.post("/api/v1/checkins/", checkin_body(person_id=obama.pk), format="json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "unknown_person", response.content

    outbox = Outbox(tmp_path / "outbox.sqlite3")
    now = datetime.now().astimezone().isoformat()
    for person in (obama, biden):  # queued offline, before the kiosk knew
        outbox.add(checkin_body(person_id=person.pk, checked_in_at=now))
    reports = outbox.upload(through_test_client(kiosk_api))
    assert sorted(str(r.get("dropped", r["status"])) for r in reports) == ["201", "unknown_person"]
    assert outbox.pending() == [] and not outbox.checked_in_recently(obama.pk, timedelta(days=1))
    outbox.close()
    assert not CheckIn.objects.filter(person=obama).exists() and CheckIn.objects.filter(person=biden).count() == 1


def softmax_head(vectors: dict[int, list], scale: float = 30.0) -> dict:
    """A head whose column per label-map index is the person's mean gallery embedding (scaled)."""
    import numpy as np

    means = [np.mean(v, axis=0) / np.linalg.norm(np.mean(v, axis=0)) for v in vectors.values()]
    return {
        "kernel": (np.stack(means, axis=1) * scale).ravel().tolist(),
        "bias": [0.0] * len(means),
        "people": list(vectors),
        "threshold": 0.5,
    }


@pytest.mark.django_db
@pytest.mark.parametrize("matching", ["nearest_neighbour", "softmax_head"])
def test_the_kiosk_stops_naming_a_person_deactivated_on_the_server_before_the_next_retrain(
    kiosk_api, settings, tmp_path, matching
):
    """The label map (trained with both) still has Barack Obama; once he is deactivated the
    manifest lists him and the kiosk masks his head column and his gallery rows: Joe Biden, in the
    same photo, is still checked in, and Obama's face is not handed to him."""
    import os

    import numpy as np

    from edge.kiosk import Kiosk
    from edge.sync import State, sync_manifest
    from people.models import FaceImage
    from recognition import services as recognition
    from recognition.engine.facenet import WEIGHTS_SHA256
    from recognition.engine.images import decode_image
    from training.engine.export import cached_embedder_tflite

    state = State(tmp_path / "state")
    pair = state.root / "pairs" / "v7-test"
    pair.mkdir()
    pipe = recognition.pipeline()
    model = cached_embedder_tflite(pipe.embedder.model, WEIGHTS_SHA256, settings.TRAINING_CACHE_DIR, flip=pipe.embedder.flip)
    os.symlink(model, pair / "model.tflite")
    obama, biden = person_named("Barack Obama"), person_named("Joe Biden")
    vectors = {
        index: [np.frombuffer(bytes(f.embedding), np.float32) for f in FaceImage.objects.in_gallery().filter(person=person)]
        for index, person in enumerate((obama, biden))
    }
    labels = {
        "version": 7,
        "matching": matching,
        "threshold": settings.FACE_MATCH_THRESHOLD,
        "alignment": {"method": pipe.config.align_method, "margin": pipe.config.align_margin, "size": 160},
        "people": [{"index": i, "person_id": p.pk, "name": p.name} for i, p in enumerate((obama, biden))],
        "gallery": {
            "labels": [i for i, v in vectors.items() for _ in v],
            "embeddings": np.concatenate(list(vectors.values())).tolist(),
        },
    }
    if matching == "softmax_head":
        labels["head"] = softmax_head(vectors)
    (pair / "labels.json").write_text(json.dumps(labels))
    state.update(pair=pair.name, version=7)
    rgb = decode_image((PROBES / "obama_and_biden.jpg").read_bytes())

    def checked_in() -> set[str]:
        kiosk = Kiosk.__new__(Kiosk)  # its recognizer as `run` loads it, without a camera or server
        kiosk.state = state
        return names_checked_in(kiosk.load(), rgb)

    server = through_test_client(kiosk_api)
    assert sync_manifest(server, state)["inactive_people"] == []
    assert checked_in() == {"Barack Obama", "Joe Biden"}
    deactivate(obama)
    assert sync_manifest(server, state)["inactive_people"] == [obama.pk]
    assert checked_in() == {"Joe Biden"}


def test_a_masked_head_column_is_dropped_not_renormalised():
    import numpy as np

    from edge.recognizer import HeadMatcher

    head = {"kernel": np.eye(3, dtype=np.float32).ravel().tolist(), "bias": [0.0, 0.0, 0.0], "people": [0, 1, 2]}
    matcher = HeadMatcher(head, {0: 10, 1: 11, 2: 12}, dim=3, masked=frozenset({10}))
    query = np.asarray([[5.0, 1.0, 0.0]], np.float32)
    (result,) = matcher.search(query, threshold=0.5)
    (candidate,) = result.candidates
    probabilities = np.exp(query[0]) / np.exp(query[0]).sum()
    assert candidate.person_id == 11 and candidate.similarity == pytest.approx(probabilities[1])  # below 0.5: unknown
    everyone_masked = HeadMatcher(head, {0: 10, 1: 11, 2: 12}, dim=3, masked=frozenset({10, 11, 12}))
    assert everyone_masked.search(query)[0].candidates == []


# ---- edge consent (DPO audit gap 6) ---------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    "sent, stored",
    [
        ({"consent_method": "operator_flag", "age_confirmed": False}, ("operator_flag", False)),
        ({"consent_method": "interactive", "age_confirmed": True}, ("interactive", True)),
        ({}, ("unrecorded", False)),  # an older device that does not say: no age was confirmed
    ],
)
def test_an_edge_consent_is_stored_as_the_device_obtained_it(kiosk_api, sent, stored):
    from checkin.models import CheckIn

    response = kiosk_api.post("/api/v1/checkins/", checkin_body(**sent), format="json")
    assert response.status_code == 201, response.content
    consent = CheckIn.objects.get(pk=response.json()["id"]).consent
    assert (consent.method, consent.age_confirmed) == stored


@pytest.mark.django_db
def test_a_notice_is_accepted_only_for_check_ins_made_while_it_was_in_force(kiosk_api, settings):
    """v1 served, then v2: a check-in queued under v1 before the change is stored, one made under
    v1 after it is refused (409 stale_notice), as is a version never in force here."""
    from django.utils import timezone

    from checkin.models import CheckIn

    settings.CHECKIN_REPEAT_WINDOW_MINUTES = 0  # two check-ins of one person, minutes apart, both stored
    settings.CONSENT_NOTICE_VERSION = "2026-v1"
    v1 = kiosk_api.get("/api/v1/edge/manifest/").json()["consent"]["notice_version"]
    before_change = (timezone.now() - timedelta(minutes=5)).isoformat()
    settings.CONSENT_NOTICE_VERSION = "2026-v2"
    v2 = kiosk_api.get("/api/v1/edge/manifest/").json()["consent"]["notice_version"]
    assert v1.startswith("2026-v1+") and v2.startswith("2026-v2+")
    after_change = (timezone.now() + timedelta(seconds=1)).isoformat()

    def upload(version: str, at: str):
        return kiosk_api.post("/api/v1/checkins/", checkin_body(notice_version=version, checked_in_at=at), format="json")

    assert upload(v1, before_change).status_code == 201
    assert upload(v2, after_change).status_code == 201
    for version, at in ((v1, after_change), ("2026-11-1", before_change), ("anything", after_change)):
        refused = upload(version, at)
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "stale_notice", (version, refused.content)
    assert CheckIn.objects.filter(time_source="device").count() == 2


@pytest.mark.django_db
def test_connecting_a_check_in_webhook_is_a_new_notice_and_consent_to_the_old_one_is_refused(
    kiosk_api, client, plain_user, settings, monkeypatch
):
    """The notice names the systems check-ins are sent to: the first webhook subscribed to check-ins
    changes its text, so the version served changes with it (CONSENT_NOTICE_VERSION untouched). A
    kiosk check-in queued under the old notice before the change is stored; one made under it after
    is refused (409 stale_notice), and so is consent to it on the check-in page's socket, whose page
    now serves the new version. MQTT_URL says the same sentence: the same text, the same version."""
    from asgiref.sync import async_to_sync
    from django.utils import timezone

    from integrations.models import Webhook

    from .test_live_stream import communicator_for, receive

    monkeypatch.setattr("channels.db.close_old_connections", lambda: None)  # the socket shares the test's transaction
    settings.CHECKIN_REPEAT_WINDOW_MINUTES = 0  # one person checked in twice, minutes apart
    settings.MQTT_URL = ""
    old = kiosk_api.get("/api/v1/edge/manifest/").json()["consent"]
    queued_before = (timezone.now() - timedelta(minutes=5)).isoformat()
    Webhook.objects.create(url="https://hr.example.com/hook", events=["checkin.created"], secret="s" * 16)
    new = kiosk_api.get("/api/v1/edge/manifest/").json()["consent"]
    made_after = (timezone.now() + timedelta(seconds=1)).isoformat()

    assert new["notice_version"] != old["notice_version"]
    assert {v.rpartition("+")[0] for v in (old["notice_version"], new["notice_version"])} == {settings.CONSENT_NOTICE_VERSION}
    assert "sent at once to the other systems" in new["text"] and "sent at once" not in old["text"]

    def upload(version: str, at: str):
        return kiosk_api.post("/api/v1/checkins/", checkin_body(notice_version=version, checked_in_at=at), format="json")

    assert upload(old["notice_version"], queued_before).status_code == 201
    refused = upload(old["notice_version"], made_after)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "stale_notice", refused.content
    assert upload(new["notice_version"], made_after).status_code == 201

    client.force_login(plain_user)
    page = client.get("/checkin/").content.decode()
    assert new["notice_version"] in page and old["notice_version"] not in page

    async def consent_to(version: str) -> tuple[str, dict]:
        communicator = communicator_for(plain_user)
        connected, _ = await communicator.connect()
        assert connected
        ready = await receive(communicator)
        await communicator.send_json_to({"type": "consent", "notice_version": version, "age_confirmed": True})
        answer = await receive(communicator)
        await communicator.disconnect()
        return ready["notice_version"], answer

    served, answer = async_to_sync(consent_to)(old["notice_version"])
    assert served == new["notice_version"] and answer["code"] == "stale_notice"
    assert async_to_sync(consent_to)(new["notice_version"])[1]["type"] == "consent_recorded"

    Webhook.objects.all().delete()
    settings.MQTT_URL = "mqtt://broker.example.com"
    assert served_notice() == new["notice_version"]


@pytest.mark.django_db
@pytest.mark.parametrize("interactive", [False, True])
def test_a_running_kiosk_asks_again_when_a_sync_brings_a_new_notice(
    kiosk_api, settings, tmp_path, monkeypatch, capsys, interactive
):
    """Headless with --consent the kiosk stops before the next frame (the next run asks again);
    interactively it shows the new notice and goes on only once it is accepted."""
    from edge.kiosk import Kiosk, ensure_consent
    from edge.outbox import Outbox
    from edge.sync import State, sync_manifest

    settings.CONSENT_NOTICE_VERSION = "2026-v1"
    server = through_test_client(kiosk_api)
    state = State(tmp_path / "state")
    sync_manifest(server, state)
    monkeypatch.setattr("builtins.input", lambda prompt: "y")  # the operator, when asked
    consent = ensure_consent(state, given_by_flag=not interactive, interactive=interactive)
    v1 = consent["notice_version"]
    settings.CONSENT_NOTICE_VERSION = "2026-v2"  # changed on the server while the kiosk runs
    v2 = served_notice()

    class Source:
        frames = 0

        def read(self):
            self.frames += 1
            return False, None

    kiosk = Kiosk.__new__(Kiosk)  # no model needed: the sync refreshes the manifest, then finds no model
    kiosk.state, kiosk.server, kiosk.sync_every, kiosk.last_sync, kiosk.online = state, server, 0.0, 0.0, None
    kiosk.max_offline_hours, kiosk.stopped = 0, None  # no offline limit: the notice is under test
    kiosk.outbox = Outbox(tmp_path / "outbox.sqlite3")
    source = Source()
    try:
        code = kiosk.run(source, headless=True, every=1, consent=consent, interactive=interactive)
    finally:
        kiosk.outbox.close()
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {"type": "consent_required", "notice_version": v2, "given": v1} in events
    if interactive:  # asked and accepted: it goes on under the new notice
        assert code == 0 and source.frames == 1
        assert state.read()["consent"]["notice_version"] == v2 and state.read()["consent"]["method"] == "interactive"
    else:  # stopped before reading another frame
        assert code == 2 and source.frames == 0
        assert state.read()["consent"]["notice_version"] == v1


# ---- a device the server no longer trusts forgets; its files are the owner's only -------------------


def serve_a_version(people) -> None:
    """An active version whose label map names ``people`` (its .tflite is bytes the kiosk only
    stores: these tests never run it)."""
    from django.core.files.base import ContentFile

    from training.models import ModelVersion

    ModelVersion.objects.all().delete()
    labels = json.dumps({"people": [{"index": i, "person_id": p.pk, "name": p.name} for i, p in enumerate(people)]}).encode()
    version = ModelVersion.objects.create(
        number=ModelVersion.next_number(),
        status="active",
        tflite_sha256=hashlib.sha256(b"tflite").hexdigest(),
        labels_sha256=hashlib.sha256(labels).hexdigest(),
    )
    version.tflite.save("model.tflite", ContentFile(b"tflite"), save=False)
    version.labels.save("labels.json", ContentFile(labels))


def synced_device(api, tmp_path: Path):
    """A device synced through the real API (pair, gallery, names, manifest), with a check-in
    queued for Barack Obama and the repeat window's row of it."""
    from edge.outbox import Outbox
    from edge.sync import State, sync

    serve_a_version([person_named("Barack Obama"), person_named("Joe Biden")])
    state = State(tmp_path / "kiosk")
    sync(through_test_client(api), state)
    outbox = Outbox(state.root / "outbox.sqlite3")
    outbox.add(checkin_body(checked_in_at=datetime.now().astimezone().isoformat()))
    return state, outbox


def holds_biometric_data(state, outbox) -> list[str]:
    held = [str(p.relative_to(state.root)) for p in state.root.rglob("*") if p.is_file() and not p.name.startswith("outbox")]
    held += ["state.json names"] if state.read().get("names") else []
    held += ["pending check-ins"] if outbox.pending() else []
    held += ["repeat-window rows"] if outbox.db.execute("SELECT 1 FROM recent").fetchone() else []
    return held


def edge_main(monkeypatch, api, state, *args: str) -> tuple[int, list[dict]]:
    """``python -m edge`` in this process, its Server sent through ``api`` (the transport only)."""
    import edge.kiosk

    monkeypatch.setattr(edge.kiosk, "Server", lambda url, key: through_test_client(api))
    lines = []
    monkeypatch.setattr(edge.kiosk, "emit", lines.append)
    code = edge.kiosk.main(["--key", "k", "--state-dir", str(state.root), *args])
    return code, lines


class Camera:
    """A video source that counts the frames asked of it."""

    def __init__(self):
        self.reads = 0

    def read(self):
        self.reads += 1
        return False, None


@pytest.mark.django_db
@pytest.mark.parametrize("withdrawn", ["kiosk deactivated", "key revoked"])
def test_a_withdrawn_kiosk_stops_recognising_and_erases_its_copy(withdrawn, kiosk, staff_user, tmp_path, monkeypatch):
    """The server's own answers (403 permission_denied for a deactivated kiosk, 401 for a revoked
    key): the running kiosk erases pair, gallery, names, queued check-in and repeat window, and stops
    before reading a frame."""
    from edge.kiosk import EXIT_WIPED, Kiosk
    from security.models import ApiKey

    key, raw = ApiKey.issue(staff_user, "front door edge", role="kiosk", kiosk=kiosk)
    api = key_client(raw)
    state, outbox = synced_device(api, tmp_path)
    assert {"gallery.npz", "manifest.json", "state.json"} <= set(holds_biometric_data(state, outbox))
    assert any(p.endswith("labels.json") for p in holds_biometric_data(state, outbox))
    monkeypatch.setattr(Kiosk, "load", lambda self: "recognizer")  # the refusal, not the model, is under test
    device = Kiosk(state, through_test_client(api), outbox, sync_every=60)

    if withdrawn == "kiosk deactivated":
        kiosk.is_active = False
        kiosk.save()
    else:
        key.revoke()
    events = []
    monkeypatch.setattr("edge.kiosk.emit", events.append)
    camera = Camera()
    assert device.run(camera, headless=True, every=1, consent={}) == EXIT_WIPED
    assert camera.reads == 0 and device.recognizer is None
    wiped = next(e for e in events if e["type"] == "wiped")
    assert ("403 permission_denied" if withdrawn == "kiosk deactivated" else "401") in wiped["reason"]
    assert "no longer recognises" in wiped["message"]
    assert holds_biometric_data(state, outbox) == ["state.json"] and list(state.read()) == ["wiped"]
    outbox.close()
    assert b"Barack Obama" not in (state.root / "outbox.sqlite3").read_bytes()


@pytest.mark.django_db
def test_the_command_line_erases_the_device_when_refused_and_by_hand(kiosk_api, kiosk, tmp_path, monkeypatch):
    state, outbox = synced_device(kiosk_api, tmp_path)
    outbox.close()
    kiosk.is_active = False
    kiosk.save()
    code, lines = edge_main(monkeypatch, kiosk_api, state, "upload")  # the upload is refused first
    assert code == 3 and lines[-1]["type"] == "wiped" and "permission_denied" in lines[-1]["reason"]
    with pytest.raises(SystemExit, match="copy was erased at .* permission_denied"):  # no camera opened
        edge_main(monkeypatch, kiosk_api, state, "run", "--video", "clip.mp4", "--headless", "--consent")

    kiosk.is_active = True  # made again, then erased by hand
    kiosk.save()
    state, outbox = synced_device(kiosk_api, tmp_path)
    outbox.close()
    code, lines = edge_main(monkeypatch, kiosk_api, state, "wipe")
    assert code == 0 and lines == [{**lines[0], "type": "wiped"}]
    from edge.outbox import Outbox

    outbox = Outbox(state.root / "outbox.sqlite3")
    assert holds_biometric_data(state, outbox) == ["state.json"]
    outbox.close()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "answer",
    [(503, b'{"error": {"code": "unavailable"}}'), (403, b"<html>Forbidden by the proxy</html>"), (401, b""), "offline"],
)
def test_an_outage_or_a_proxys_refusal_keeps_the_device_working_offline(answer, kiosk_api, tmp_path, monkeypatch):
    from edge.sync import Offline

    state, outbox = synced_device(kiosk_api, tmp_path)
    before = holds_biometric_data(state, outbox)
    outbox.close()

    class Unwell:
        def request(self, path_or_url, method="GET", body=None):
            if answer == "offline":
                raise Offline("connection refused")
            return answer

        def json(self, path):
            return through_test_client(kiosk_api).__class__.json(self, path)

    import edge.kiosk

    monkeypatch.setattr(edge.kiosk, "Server", lambda url, key: Unwell())
    monkeypatch.setattr(edge.kiosk, "emit", lambda event: None)
    for command in ("sync", "upload"):
        assert edge.kiosk.main(["--key", "k", "--state-dir", str(state.root), command]) == 1
    from edge.outbox import Outbox

    outbox = Outbox(state.root / "outbox.sqlite3")
    assert holds_biometric_data(state, outbox) == before and "wiped" not in state.read()
    outbox.close()


@pytest.mark.django_db
def test_a_kiosk_offline_longer_than_the_maximum_stops_recognising(kiosk_api, tmp_path, monkeypatch):
    from datetime import UTC

    from edge.kiosk import EXIT_STALE, Kiosk
    from edge.sync import Offline

    state, outbox = synced_device(kiosk_api, tmp_path)
    monkeypatch.setattr(Kiosk, "load", lambda self: "recognizer")

    class Away:
        def request(self, *args, **kwargs):
            raise Offline("no route to host")

        json = download = request

    events = []
    monkeypatch.setattr("edge.kiosk.emit", events.append)
    consent = {"notice_version": state.manifest["consent"]["notice_version"]}  # the notice in force
    state.update(last_sync_at=(datetime.now(UTC) - timedelta(hours=5)).isoformat())
    camera = Camera()
    assert Kiosk(state, Away(), outbox, 60, max_offline_hours=24).run(camera, True, 1, consent) == 0
    assert camera.reads == 1  # recognising offline, as before
    state.update(last_sync_at=(datetime.now(UTC) - timedelta(hours=25)).isoformat())
    camera = Camera()
    assert Kiosk(state, Away(), outbox, 60, max_offline_hours=24).run(camera, True, 1, consent) == EXIT_STALE
    assert camera.reads == 0 and events[-2]["type"] == "stale" and "25.0 hours" in events[-2]["reason"]
    assert Kiosk(state, Away(), outbox, 60, max_offline_hours=0).run(Camera(), True, 1, consent) == 0  # 0: no limit
    assert state.read()["names"]  # stopped, not erased: a sync brings it back
    outbox.close()


@pytest.mark.django_db
def test_the_repeat_window_keeps_only_recent_rows_of_people_still_on_the_device(
    kiosk_api, staff_api, django_capture_on_commit_callbacks, tmp_path, monkeypatch
):
    """Rows of an erased person (uploaded before the erasure: no ``unknown_person`` answer to drop
    them) and rows older than the window go at the next sync, and when the kiosk opens."""
    from datetime import UTC

    from edge.kiosk import Kiosk
    from edge.outbox import Outbox

    obama, biden = person_named("Barack Obama"), person_named("Joe Biden")
    state, outbox = synced_device(kiosk_api, tmp_path)
    outbox.erase()
    now = datetime.now(UTC)
    for person, at in ((obama, now), (biden, now), (biden, now - timedelta(hours=2))):
        outbox.db.execute("INSERT INTO recent (person_id, at) VALUES (?, ?)", (person.pk, at.isoformat()))
    outbox.db.commit()
    outbox.close()

    def rows() -> list[tuple[int, str]]:
        box = Outbox(state.root / "outbox.sqlite3")
        found = box.db.execute("SELECT person_id, at FROM recent ORDER BY person_id").fetchall()
        box.close()
        return found

    with django_capture_on_commit_callbacks(execute=True):
        assert staff_api.delete(f"/api/v1/people/{obama.pk}/").status_code == 204
    serve_a_version([biden])  # the server's label map without him, as an erasure leaves it
    assert edge_main(monkeypatch, kiosk_api, state, "sync")[0] == 0
    assert rows() == [(biden.pk, now.isoformat())]

    outbox = Outbox(state.root / "outbox.sqlite3")  # opening the kiosk prunes too
    outbox.db.execute("INSERT INTO recent (person_id, at) VALUES (?, ?)", (424242, now.isoformat()))
    outbox.db.commit()
    monkeypatch.setattr(Kiosk, "load", lambda self: "recognizer")
    Kiosk(state, None, outbox, 60)
    outbox.close()
    assert rows() == [(biden.pk, now.isoformat())]


@pytest.mark.django_db
def test_the_devices_files_and_folders_are_the_owners_only(kiosk_api, tmp_path, monkeypatch):
    """With a permissive umask, and over a state directory an older version left readable."""
    import io
    import os
    import stat

    from edge.outbox import Outbox
    from edge.sync import Server

    from .test_edge_export import load_edge_client

    old = os.umask(0o022)
    try:
        (tmp_path / "kiosk" / "pairs").mkdir(parents=True, mode=0o755)
        sqlite3.connect(tmp_path / "kiosk" / "outbox.sqlite3").execute("CREATE TABLE t (x)").connection.close()  # 0644
        state, outbox = synced_device(kiosk_api, tmp_path)
        outbox.db.execute("BEGIN IMMEDIATE")
        outbox.db.execute("INSERT INTO recent (person_id, at) VALUES (1, 'now')")  # the journal is open now

        class Response(io.BytesIO):
            status = 200
            headers = {}

        monkeypatch.setattr("urllib.request.urlopen", lambda request, timeout=None: Response(b"model bytes"))
        Server("http://testserver", "k").download("http://testserver/m", state.root / "pairs" / "download")
        files = {p: stat.S_IMODE(p.stat().st_mode) for p in [state.root, *state.root.rglob("*")]}
        assert (state.root / "outbox.sqlite3-journal") in files and any(p.name == "labels.json" for p in files)
        assert {str(p.relative_to(tmp_path)): m for p, m in files.items() if m != (0o700 if p.is_dir() else 0o600)} == {}
        outbox.db.rollback()
        outbox.close()
        Outbox(tmp_path / "wal.sqlite3").db.execute("PRAGMA journal_mode = WAL").fetchall()
        assert {stat.S_IMODE(p.stat().st_mode) for p in tmp_path.glob("wal.sqlite3*")} == {0o600}

        client = load_edge_client(monkeypatch)
        labels = json.dumps({"people": []}).encode()
        answers = {
            "http://s/api/v1/models/active/": json.dumps(
                {
                    "number": 1,
                    "tflite_url": "http://s/t",
                    "labels_url": "http://s/l",
                    "tflite_sha256": hashlib.sha256(b"t").hexdigest(),
                    "labels_sha256": hashlib.sha256(labels).hexdigest(),
                }
            ).encode(),
            "http://s/t": b"t",
            "http://s/l": labels,
        }
        monkeypatch.setattr(client.urllib.request, "urlopen", lambda request, timeout=None: Response(answers[request.full_url]))
        out = tmp_path / "edge-client"
        out.mkdir(mode=0o755)
        (out / "labels.json").write_bytes(b"{}")  # an older client's, 0644
        client.download("http://s", "token", out)
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [out, *out.iterdir()]}
        assert modes == {"edge-client": 0o700, "model.tflite": 0o600, "labels.json": 0o600}
    finally:
        os.umask(old)


@pytest.mark.django_db
def test_a_check_in_made_under_a_notice_never_in_force_is_dropped_from_the_outbox(kiosk_api, tmp_path):
    """The server can never store it (409 stale_notice), so the device does not keep it for ever."""
    from edge.outbox import Outbox

    outbox = Outbox(tmp_path / "outbox.sqlite3")
    now = datetime.now().astimezone().isoformat()
    outbox.add(checkin_body(checked_in_at=now, notice_version="1999-never"))
    outbox.add(checkin_body(checked_in_at=now))  # the notice in force: stored
    reports = outbox.upload(through_test_client(kiosk_api))
    assert sorted(str(r.get("dropped", r["status"])) for r in reports) == ["201", "stale_notice"]
    assert outbox.pending() == []
    outbox.close()


# ---- what an upload may cost: the repeat window, device times retention can purge, a rate ----------


def ago(**delta) -> str:
    return (datetime.now().astimezone() - timedelta(**delta)).isoformat()


@pytest.fixture
def queued_tasks(settings, monkeypatch):
    """The webhook deliveries and MQTT messages a check-in queues (one subscribed webhook, MQTT
    configured), recorded at the task queue instead of run."""
    from integrations import events
    from integrations.models import Webhook

    settings.MQTT_URL = "mqtt://127.0.0.1:1"
    Webhook.objects.create(url="https://hooks.example/checkins", events=["checkin.created"], secret="s" * 32)
    queued = []
    monkeypatch.setattr(events, "_queue", lambda task, *args, **kwargs: queued.append(task))
    return queued


@pytest.mark.django_db
def test_uploads_of_one_person_within_the_repeat_window_store_one_row_and_announce_it_once(
    kiosk_api, settings, queued_tasks, django_capture_on_commit_callbacks
):
    from checkin.models import CheckIn
    from integrations.models import Delivery

    settings.CHECKIN_REPEAT_WINDOW_MINUTES = 30
    answers = []
    for minutes in (45, 50, 30, 16, 74):  # new client_ids, the device's times within 30 min of the first's
        with django_capture_on_commit_callbacks(execute=True):
            answers.append(kiosk_api.post("/api/v1/checkins/", checkin_body(checked_in_at=ago(minutes=minutes)), format="json"))
    assert [a.status_code for a in answers] == [201, 200, 200, 200, 200], [a.content for a in answers]
    assert {a.json()["id"] for a in answers} == {answers[0].json()["id"]}  # each answered with the stored row
    assert CheckIn.objects.filter(time_source="device").count() == 1
    assert Delivery.objects.count() == 1
    assert sorted(queued_tasks) == ["integrations.tasks.deliver", "integrations.tasks.publish"]

    with django_capture_on_commit_callbacks(execute=True):  # 40 min after the first: a new one
        later = kiosk_api.post("/api/v1/checkins/", checkin_body(checked_in_at=ago(minutes=5)), format="json")
    assert later.status_code == 201, later.content
    assert CheckIn.objects.filter(time_source="device").count() == 2 and Delivery.objects.count() == 2


@pytest.mark.django_db
def test_the_repeat_window_is_each_kiosks_own(kiosk_api, staff_user, staff_api):
    from checkin.models import CheckIn, Kiosk
    from security.models import ApiKey

    other = Kiosk(name="Back door")
    other.set_new_token()
    other.save()
    _, raw = ApiKey.issue(staff_user, "back door edge", role="kiosk", kiosk=other)
    at = ago(minutes=1)
    for api in (kiosk_api, key_client(raw), staff_api):  # two kiosks and a staff uploader: three rows
        response = api.post("/api/v1/checkins/", checkin_body(checked_in_at=at), format="json")
        assert response.status_code == 201, response.content
    assert staff_api.post("/api/v1/checkins/", checkin_body(checked_in_at=at), format="json").status_code == 200
    rows = CheckIn.objects.filter(time_source="device")
    assert rows.count() == 3 and rows.filter(kiosk=None, user=staff_user).count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    "when, code",
    [
        ({"minutes": -10}, "checked_in_at_in_future"),  # beyond the 5 min a device's clock may be ahead
        ({"days": -365 * 7974}, "checked_in_at_in_future"),  # about 9999-01-01
        ({"days": 31}, "checked_in_at_too_old"),  # retention deletes it at once
    ],
)
def test_a_check_in_dated_where_retention_cannot_handle_it_is_refused(kiosk_api, settings, when, code):
    from checkin.models import CheckIn

    settings.EDGE_CLOCK_SKEW_SECONDS = 300
    settings.CHECKIN_RETENTION_DAYS = 30
    response = kiosk_api.post("/api/v1/checkins/", checkin_body(checked_in_at=ago(**when)), format="json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == code and "checked_in_at" in error["fields"] and error["message"]
    assert not CheckIn.objects.filter(time_source="device").exists()


@pytest.mark.django_db
def test_a_device_clock_slightly_ahead_and_old_check_ins_kept_for_ever_are_accepted(kiosk_api, settings):
    settings.EDGE_CLOCK_SKEW_SECONDS = 300
    settings.CHECKIN_RETENTION_DAYS = 0  # kept until staff delete them
    settings.CHECKIN_REPEAT_WINDOW_MINUTES = 30
    for when in ({"minutes": -4}, {"days": 800}):
        response = kiosk_api.post("/api/v1/checkins/", checkin_body(checked_in_at=ago(**when)), format="json")
        assert response.status_code == 201, (when, response.content)


@pytest.mark.django_db
def test_the_outbox_drops_a_check_in_older_than_retention_and_keeps_one_from_a_clock_ahead(kiosk_api, settings, tmp_path):
    """An offline kiosk's queue older than the retention can never be stored: dropped, not kept for
    ever. One from a clock ahead of the server's is kept: it is stored once the server's clock catches up."""
    from edge.outbox import Outbox

    settings.CHECKIN_RETENTION_DAYS = 30
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    old, ahead, fresh = (checkin_body(checked_in_at=ago(**when)) for when in ({"days": 40}, {"hours": -2}, {"minutes": 1}))
    for checkin in (old, ahead, fresh):
        outbox.add(checkin)
    reports = {r["client_id"]: r for r in outbox.upload(through_test_client(kiosk_api))}
    assert reports[old["client_id"]]["dropped"] == "checked_in_at_too_old"
    assert reports[ahead["client_id"]]["status"] == 400 and "checked_in_at_in_future" in reports[ahead["client_id"]]["error"]
    assert reports[fresh["client_id"]]["status"] == 201
    assert [c["client_id"] for c in outbox.pending()] == [ahead["client_id"]]
    outbox.close()


@pytest.mark.django_db
def test_check_in_uploads_have_a_rate_of_their_own_per_kiosk(kiosk_api, staff_user, monkeypatch):
    from checkin.api import EdgeCheckInRateThrottle
    from checkin.models import Kiosk
    from security.models import ApiKey

    monkeypatch.setattr(
        EdgeCheckInRateThrottle, "THROTTLE_RATES", {**EdgeCheckInRateThrottle.THROTTLE_RATES, "edge_checkin": "3/min"}
    )
    people = [person_named(name) for name in ("Barack Obama", "Joe Biden", "Kit Harington", "Rose Leslie")]
    answers = [
        kiosk_api.post("/api/v1/checkins/", checkin_body(person_id=p.pk, checked_in_at=ago(minutes=1)), format="json")
        for p in people
    ]
    assert [a.status_code for a in answers] == [201, 201, 201, 429]
    assert answers[-1].json()["error"]["code"] == "throttled" and answers[-1].has_header("Retry-After")
    assert kiosk_api.get("/api/v1/edge/manifest/").status_code == 200  # its other calls are not counted here
    other = Kiosk(name="Back door")
    other.set_new_token()
    other.save()
    _, raw = ApiKey.issue(staff_user, "back door edge", role="kiosk", kiosk=other)
    assert key_client(raw).post("/api/v1/checkins/", checkin_body(checked_in_at=ago(minutes=1)), format="json").status_code == 201
