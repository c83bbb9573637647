"""Keeping the kiosk's model pair, gallery and server rules in step with the server.

State directory layout (``--state-dir``, default var/edge-kiosk)::

    state.json        version in use, its sha256s, gallery cursor, consent given on this device
    manifest.json     the server's last manifest: notice text and version, check-in rule
    pairs/v<N>-<sha>/ model.tflite + labels.json of one version, verified (+ dlib.tflite on a fused site)
    gallery.npz       the gallery's faces (ids, person ids, embeddings), names in state.json; replaced
                      whole once every page of a sync arrived (sync_gallery)
    outbox.sqlite3    check-ins waiting for upload (outbox.py)

Everything here is the owner's only: the directories are 0700 and the files 0600 (``private_dir``,
``private_file``, and the entry points' umask), SQLite's -journal/-wal files included.

When the server refuses this device's key for good (``Refused``: the kiosk was deactivated, or its key
revoked), ``State.wipe`` erases the pairs, the gallery, the names and the manifest; the kiosk empties
its outbox too and stops recognising (kiosk.py). ``state.json`` then holds only ``wiped``: when and why.

A new pair is downloaded into ``pairs/.partial-*``, every file's sha256 is checked against the
manifest, and only then is the folder renamed and state.json (written to a temporary name, then
``os.replace``) pointed at it: a failed or tampered download leaves the previous pair in use. On a
site serving the fused embedder the pair has a third file, dlib's network (``DLIB_FILE``), checked
the same way and against the label map's ``template``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

MODEL_FILE = "model.tflite"
DLIB_FILE = "dlib.tflite"
LABELS_FILE = "labels.json"
# The embedding length when a label map or gallery answer states none: FaceNet's (every server
# before the fused edge export; a FaceNet site's answers are unchanged since).
FACENET_DIM = 128


class SyncError(Exception):
    """The server answered, but what it sent cannot be used (bad sha256, no model, refused key).
    ``status`` and ``error``: the HTTP status and the API's error code, when it sent one."""

    def __init__(self, message: str, status: int | None = None, error: str | None = None):
        super().__init__(message)
        self.status = status
        self.error = error


class Refused(SyncError):
    """The server refused this device's key for good: the kiosk was deactivated (403
    ``permission_denied``) or its key revoked or unknown (401 ``authentication_failed`` /
    ``not_authenticated``). The device must forget what it holds. Only the API's own error answer
    counts: a proxy's or captive portal's 401/403 page, a 5xx or no answer leave the device working."""


class Offline(Exception):
    """The server could not be reached."""


REFUSAL_CODES = {401: {"not_authenticated", "authentication_failed"}, 403: {"permission_denied"}}


def check_refused(code: int, body: bytes, what: str) -> None:
    """Raise ``Refused`` if ``code`` and the API's error code in ``body`` refuse this key for good."""
    if code not in REFUSAL_CODES:
        return
    try:
        error = json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return
    if error in REFUSAL_CODES[code]:
        raise Refused(f"{what}: HTTP {code} {error}: the server refuses this device's key")


def api_error_code(body: bytes) -> str | None:
    """The API's error code (``{"error": {"code": ...}}``), if the answer is one."""
    try:
        return json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


def private_dir(path: Path) -> Path:
    """``path`` made if missing, and readable by the owner only (0700), even if made before."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def private_file(path: Path) -> int:
    """An fd of ``path`` opened for writing (created or truncated), 0600 even if it existed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    return fd


@dataclass
class Server:
    url: str
    key: str
    timeout: float = 30.0

    def request(self, path_or_url: str, method: str = "GET", body: dict | None = None) -> tuple[int, bytes]:
        url = path_or_url if path_or_url.startswith("http") else self.url.rstrip("/") + path_or_url
        headers = {"Authorization": f"Token {self.key}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            with urllib.request.urlopen(
                urllib.request.Request(url, data=data, method=method, headers=headers), timeout=self.timeout
            ) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()
        except (urllib.error.URLError, OSError) as err:
            raise Offline(f"{url}: {getattr(err, 'reason', err)}") from err

    def json(self, path: str) -> dict:
        code, data = self.request(path)
        check_refused(code, data, path)
        if code != 200:
            raise SyncError(f"{path}: HTTP {code}: {data[:300].decode(errors='replace')}", code, api_error_code(data))
        return json.loads(data)

    def download(self, url: str, target: Path) -> str:
        """Stream ``url`` into ``target``; returns the sha256 of what was written."""
        digest = hashlib.sha256()
        request = urllib.request.Request(url, headers={"Authorization": f"Token {self.key}"})
        try:
            with (
                urllib.request.urlopen(request, timeout=max(self.timeout, 300)) as response,
                os.fdopen(private_file(target), "wb") as out,
            ):
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
        except urllib.error.HTTPError as err:
            check_refused(err.code, err.read(), url)
            raise SyncError(f"{url}: HTTP {err.code}") from err
        except (urllib.error.URLError, OSError) as err:
            raise Offline(f"{url}: {getattr(err, 'reason', err)}") from err
        return digest.hexdigest()


class State:
    """The kiosk's state directory (see the module docstring)."""

    def __init__(self, root: Path):
        self.root = private_dir(Path(root))
        private_dir(self.root / "pairs")

    # ---- small JSON files, replaced atomically ------------------------------------------------------

    def read(self, name: str = "state.json") -> dict:
        path = self.root / name
        return json.loads(path.read_text()) if path.exists() else {}

    def write(self, data: dict, name: str = "state.json") -> None:
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{name}.")
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, indent=1)
        os.replace(tmp, self.root / name)

    def update(self, **values) -> dict:
        state = self.read()
        state.update(values)
        self.write(state)
        return state

    # ---- the model pair -----------------------------------------------------------------------------

    @property
    def pair_dir(self) -> Path | None:
        name = self.read().get("pair")
        return self.root / "pairs" / name if name else None

    @property
    def version(self) -> int | None:
        return self.read().get("version")

    @property
    def manifest(self) -> dict:
        return self.read("manifest.json")

    def pair_people(self) -> set[int]:
        """Person ids of the label map in use (empty without one)."""
        if "pair_people" in self.read():
            return set(self.read()["pair_people"])
        pair = self.pair_dir
        if pair is None or not (pair / LABELS_FILE).exists():
            return set()
        return {int(p["person_id"]) for p in json.loads((pair / LABELS_FILE).read_text()).get("people", [])}

    def known_people(self) -> set[int]:
        """Person ids the device may still recognise: the label map's and the synced gallery's."""
        gallery = self.gallery()
        return self.pair_people() | (set(gallery[1].tolist()) if gallery is not None else set())

    def offline_for(self) -> float | None:
        """Seconds since the last complete sync; None if this device never recorded one."""
        last = self.read().get("last_sync_at")
        return (datetime.now(UTC) - datetime.fromisoformat(last)).total_seconds() if last else None

    def wipe(self, reason: str) -> None:
        """Erase the model pairs (label maps: names and embeddings), the gallery, the names and the
        manifest; ``state.json`` keeps only when and why. The outbox is the caller's (Outbox.erase)."""
        shutil.rmtree(self.root / "pairs", ignore_errors=True)
        private_dir(self.root / "pairs")
        for path in self.root.iterdir():
            if path.is_file() and not path.name.startswith("outbox.sqlite3"):
                path.unlink(missing_ok=True)
        self.write({"wiped": {"at": datetime.now(UTC).isoformat(), "reason": reason}})

    # ---- the gallery delta --------------------------------------------------------------------------

    def gallery(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(face ids, person ids, (N, dim) embeddings) from the last gallery sync, or None. Their
        embedder is ``state.json``'s ``gallery_embedder`` (None from a server that did not say)."""
        path = self.root / "gallery.npz"
        if not path.exists():
            return None
        with np.load(path) as data:
            return data["ids"], data["people"], data["embeddings"]

    def save_gallery(self, ids: np.ndarray, people: np.ndarray, embeddings: np.ndarray) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".gallery.", suffix=".npz")
        with os.fdopen(fd, "wb") as out:
            np.savez(out, ids=np.asarray(ids, np.int64), people=np.asarray(people, np.int64), embeddings=embeddings)
        os.replace(tmp, self.root / "gallery.npz")


def sync_manifest(server: Server, state: State) -> dict:
    """The manifest, for the version whose label map we hold (0: none), so that ``inactive_people``
    covers everyone deactivated since it was trained."""
    manifest = server.json("/api/v1/edge/manifest/?" + urllib.parse.urlencode({"version": state.version or 0}))
    state.write(manifest, "manifest.json")
    return manifest


def sync_model(server: Server, state: State, manifest: dict) -> bool:
    """Download the active version's pair if its sha256s differ from ours. True if it changed.

    Raises SyncError (and keeps the pair in use) when a file does not match the manifest's sha256."""
    model = manifest.get("model")
    if not model:
        raise SyncError("the server has no active model version with exported TFLite files")
    current = state.read()
    shas = ("tflite_sha256", "labels_sha256", "dlib_tflite_sha256")
    if all(current.get(key) == model.get(key) for key in shas):
        return False
    files = [(MODEL_FILE, "tflite_url", "tflite_sha256"), (LABELS_FILE, "labels_url", "labels_sha256")]
    if model.get("dlib_tflite_sha256"):  # a fused site: dlib's network too
        files.append((DLIB_FILE, "dlib_tflite_url", "dlib_tflite_sha256"))
    partial = Path(tempfile.mkdtemp(dir=state.root / "pairs", prefix=".partial-"))
    try:
        for name, url_key, sha_key in files:
            got = server.download(model[url_key], partial / name)
            if got != model[sha_key]:
                raise SyncError(
                    f"version {model['number']}: {name} has sha256 {got[:12]}…, the server announced "
                    f"{model[sha_key][:12]}…; kept version {current.get('version')}"
                )
        labels = json.loads((partial / LABELS_FILE).read_text())
        if labels.get("tflite_sha256") not in (None, model["tflite_sha256"]):
            raise SyncError(f"version {model['number']}: the label map belongs to another .tflite; kept the old pair")
        dlib = (labels.get("template") or {}).get("dlib", {}).get("tflite_sha256")
        if dlib != model.get("dlib_tflite_sha256"):
            raise SyncError(
                f"version {model['number']}: the label map asks for dlib's network {str(dlib)[:12]}, the server sent "
                f"{str(model.get('dlib_tflite_sha256'))[:12]}; kept the old pair"
            )
        name = f"v{model['number']}-{model['labels_sha256'][:12]}"
        target = state.root / "pairs" / name
        if target.exists():
            shutil.rmtree(target)
        people = sorted({int(p["person_id"]) for p in labels.get("people", []) if "person_id" in p})
        partial.rename(target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    state.update(
        pair=name,
        version=model["number"],
        tflite_sha256=model["tflite_sha256"],
        labels_sha256=model["labels_sha256"],
        dlib_tflite_sha256=model.get("dlib_tflite_sha256"),
        pair_people=people,
    )
    # The pair replaced is deleted, not kept: its label map names people and holds their embeddings,
    # and the server replaces a map when someone is erased or a photo deleted (same version, new map).
    for old in (state.root / "pairs").iterdir():
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return True


GALLERY_PATH = "/api/v1/edge/gallery/"


def sync_gallery(server: Server, state: State) -> int:
    """Follow the gallery's pages from our cursor; returns how many faces changed (added, updated or
    removed).

    Each answer holds a bounded page (checkin/edge_api.py, EdgeGalleryView): ``start`` begins a full
    sync (the gallery becomes exactly the faces of its pages), ``people`` names the people whose
    faces to drop before adding the page's, ``more`` asks for the next page. The pages of one sync
    are applied together in memory and saved once, with their cursor: a page that fails (offline, a
    server error) leaves the previous gallery and cursor in use. A cursor the server no longer
    accepts (``400 invalid``) starts a full sync. A server from before the pages (no ``more`` in its
    answer) sends the whole delta and every face id at once (``_sync_gallery_whole``)."""
    saved = state.read()
    have = state.gallery()
    cursor = saved.get("gallery_cursor") if have is not None else None
    rows: dict[int, tuple[int, np.ndarray]] = {} if have is None else {int(i): (int(p), e) for i, p, e in zip(*have)}
    before = set(rows)
    names = dict(saved.get("names", {}))
    embedder, dim = saved.get("gallery_embedder"), FACENET_DIM
    received, restarts, starts = 0, 0, 0
    while True:
        try:
            query = {"pages": 1, **({"since": cursor} if cursor else {})}  # pages=1: this client follows pages
            page = server.json(GALLERY_PATH + "?" + urllib.parse.urlencode(query))
        except SyncError as err:
            if cursor and err.error == "invalid" and restarts < 2:  # e.g. the server's signing key changed
                cursor, rows, names, restarts = None, {}, {}, restarts + 1
                continue
            raise
        if "more" not in page:
            return _sync_gallery_whole(server, state, page, have)
        dim = int(page.get("dim", FACENET_DIM))
        if page["start"]:
            starts += 1
            if starts > 2:
                raise SyncError("the server started the gallery over more than twice in one sync; kept the gallery")
            rows, names = {}, {}
        elif page.get("embedder") != embedder and rows and restarts < 2:  # a delta of another embedder's templates
            cursor, rows, names, restarts = None, {}, {}, restarts + 1
            continue
        embedder = page.get("embedder")
        gone = {int(p) for p in page["people"]}
        if gone:
            rows = {i: row for i, row in rows.items() if row[0] not in gone}
        for face in page["faces"]:
            rows[int(face["id"])] = (int(face["person_id"]), _embedding(face, dim))
            names[str(face["person_id"])] = face["name"]
        received += len(page["faces"])
        if page["more"] and page["cursor"] == cursor:
            raise SyncError("the gallery answer asks for more pages but its cursor did not move; kept the gallery")
        cursor = page["cursor"]
        if not page["more"]:
            break
    _save_gallery(state, rows, names, dim, cursor=cursor, embedder=embedder)
    return received + len(before - set(rows))


def _embedding(face: dict, dim: int) -> np.ndarray:
    embedding = np.frombuffer(base64.b64decode(face["embedding"]), dtype="<f4").astype(np.float32)
    if embedding.size != dim:
        raise SyncError(f"gallery face {face['id']}: {embedding.size} numbers, the answer says {dim}")
    return embedding


def _save_gallery(state: State, rows: dict, names: dict, dim: int, **cursor) -> None:
    ids = np.asarray(sorted(rows), np.int64)
    people = np.asarray([rows[i][0] for i in ids], np.int64)
    embeddings = np.stack([rows[i][1] for i in ids]) if len(ids) else np.zeros((0, dim), np.float32)
    state.save_gallery(ids, people, embeddings)
    # names of the people in the gallery now only: an erased person's name leaves the device too
    present = set(people.tolist())
    names = {k: v for k, v in names.items() if int(k) in present}
    state.update(gallery_cursor=cursor["cursor"], names=names, gallery_embedder=cursor["embedder"])


def _sync_gallery_whole(server: Server, state: State, delta: dict, have) -> int:
    """A server from before the pages: the faces changed since the cursor and the ids of every face
    now, in one answer (the device drops the faces not listed)."""
    embedder, dim = delta.get("embedder"), int(delta.get("dim", FACENET_DIM))
    if not delta["full"] and have is not None and embedder != state.read().get("gallery_embedder"):
        state.update(gallery_cursor=None)  # another embedder's templates: start over
        (state.root / "gallery.npz").unlink(missing_ok=True)
        return sync_gallery(server, state)
    if delta["full"] or have is None:
        rows: dict[int, tuple[int, np.ndarray]] = {}
    else:
        rows = {int(i): (int(p), e) for i, p, e in zip(*have)}
    names = dict(state.read().get("names", {}))
    before = set(rows)
    for face in delta["faces"]:
        rows[int(face["id"])] = (int(face["person_id"]), _embedding(face, dim))
        names[str(face["person_id"])] = face["name"]
    current = {int(i) for i in delta["ids"]}
    if current - set(rows):  # faces back in the gallery without a change of their own: start over
        state.update(gallery_cursor=None)
        (state.root / "gallery.npz").unlink(missing_ok=True)
        return sync_gallery(server, state)
    rows = {i: row for i, row in rows.items() if i in current}
    _save_gallery(state, rows, names, dim, cursor=delta["cursor"], embedder=embedder)
    return len(delta["faces"]) + len(before - current)


def sync(server: Server, state: State) -> dict:
    """Manifest, model pair and gallery delta. Returns what happened, for the log line."""
    manifest = sync_manifest(server, state)
    changed = sync_model(server, state, manifest)
    gallery = sync_gallery(server, state)
    state.update(last_sync_at=datetime.now(UTC).isoformat())
    return {"type": "sync", "version": state.version, "model_changed": changed, "gallery_changes": gallery}
