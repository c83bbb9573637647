"""export_embeddings / import_embeddings: the real enrolled gallery out, into an empty one, and
recognized through the real API; malformed files refused with nothing written."""

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from people.models import FaceImage, Person
from recognition.services import pipeline
from security.models import AuditEvent
from training.models import ModelVersion

from .conftest import PROBES, read

pytestmark = pytest.mark.django_db

UNPICKLED = []


def _tripwire():
    UNPICKLED.append(True)
    return "unpickled"


class Canary:
    """Unpickling it calls _tripwire: a refused pickle must leave UNPICKLED empty."""

    def __reduce__(self):
        return (_tripwire, ())


def served_embedder() -> str:
    return pipeline().embedder_name


def export(path: Path, **options) -> dict:
    call_command("export_embeddings", str(path), verbosity=0, **options)
    with np.load(path, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def import_file(path: Path, legal_basis="explicit_consent", **options) -> str:
    out = io.StringIO()
    call_command("import_embeddings", str(path), legal_basis=legal_basis, stdout=out, **options)
    return out.getvalue()


def unit_vectors(count: int, dim: int = 128, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def write_file(path: Path, names, embeddings, embedder=None, **extra) -> Path:
    arrays = {"names": np.array(names, dtype=str), "embeddings": embeddings, "embedder": np.array(embedder or served_embedder())}
    np.savez(path, **arrays, **extra)
    return path


def empty_the_gallery():
    FaceImage.objects.all().delete()
    Person.objects.all().delete()


def recognize(api, probe: str):
    response = api.post("/api/v1/recognize/", {"image": SimpleUploadedFile(probe, read(PROBES / probe))}, format="multipart")
    assert response.status_code == 200, response.content
    return [face["match"] for face in response.json()["faces"]]


def test_export_writes_the_served_gallery(tmp_path):
    gallery = FaceImage.objects.in_gallery().order_by("person_id", "id")
    arrays = export(tmp_path / "gallery.npz")

    assert set(arrays) == {"names", "embeddings", "embedder", "external_ids", "face_ids"}
    assert arrays["names"].dtype.kind == "U" and arrays["embeddings"].dtype == np.float32
    assert arrays["embedder"].shape == () and str(arrays["embedder"]) == served_embedder()
    assert arrays["face_ids"].tolist() == [face.pk for face in gallery]
    assert arrays["names"].tolist() == [face.person.name for face in gallery]
    assert np.array_equal(arrays["embeddings"], np.stack([face.vector for face in gallery]))
    assert np.allclose(np.linalg.norm(arrays["embeddings"], axis=1), 1.0, atol=1e-5)
    assert "Barack Obama" in arrays["names"].tolist()


def test_export_leaves_out_inactive_people_and_unaccepted_faces(tmp_path):
    Person.objects.filter(name="Joe Biden").update(is_active=False)
    FaceImage.objects.filter(person__name="Paul Rudd").update(status=FaceImage.Status.REVIEW)
    names = set(export(tmp_path / "gallery.npz")["names"].tolist())
    assert "Joe Biden" not in names and "Paul Rudd" not in names and "Barack Obama" in names


def test_export_is_audited_with_counts_only(tmp_path):
    export(tmp_path / "gallery.npz")
    event = AuditEvent.objects.get(action="export_embeddings")
    assert event.result["faces"] == FaceImage.objects.in_gallery().count()
    assert event.result["people"] == Person.objects.filter(faces__in=FaceImage.objects.in_gallery()).distinct().count()
    assert event.person_ids == "" and "Obama" not in json.dumps(event.result)


def test_export_refuses_to_overwrite_without_force_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "gallery.npz"
    target.write_bytes(b"keep me")
    with pytest.raises(CommandError, match="exists; pass --force"):
        call_command("export_embeddings", str(target), verbosity=0)
    assert target.read_bytes() == b"keep me"

    export(target, force=True)
    assert target.stat().st_mode & 0o777 == 0o600  # biometric templates: its owner only
    assert [p.name for p in tmp_path.iterdir()] == ["gallery.npz"]


def test_an_empty_gallery_is_not_exported(tmp_path):
    empty_the_gallery()
    with pytest.raises(CommandError, match="gallery is empty"):
        call_command("export_embeddings", str(tmp_path / "gallery.npz"), verbosity=0)
    assert not (tmp_path / "gallery.npz").exists()


def test_an_imported_gallery_names_the_probe_through_the_api(tmp_path, user_api, django_capture_on_commit_callbacks):
    export(tmp_path / "gallery.npz")
    faces = FaceImage.objects.in_gallery().count()
    empty_the_gallery()
    assert recognize(user_api, "obama1.jpg") == [None]  # this process has loaded the empty gallery

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        output = import_file(tmp_path / "gallery.npz", legal_basis="employment")
    assert len(callbacks) == 1  # one retrain for the whole import, not one per face
    assert ModelVersion.objects.queued().filter(trigger=ModelVersion.Trigger.ENROLLMENT).exists()
    assert f"Imported {faces} faces" in output and "faces/s" in output

    # the next request serves the imported faces, through the same freshness check other processes use
    matches = recognize(user_api, "obama1.jpg")
    obama = Person.objects.get(name="Barack Obama")
    assert [m and m["name"] for m in matches] == ["Barack Obama"] and matches[0]["person_id"] == obama.pk
    assert obama.legal_basis == "employment" and obama.consent_recorded_at is not None
    face = obama.faces.first()
    assert face.status == FaceImage.Status.ACCEPTED and not face.image and not face.crop
    assert face.original_name == "imported from gallery.npz" and face.embedder == served_embedder()
    event = AuditEvent.objects.get(action="import_embeddings")
    assert event.result["faces"] == faces and event.result["people_created"] == Person.objects.count()


def test_export_then_import_preserves_names_and_vectors_exactly(tmp_path):
    Person.objects.filter(name="Joe Biden").update(external_id="HR-0042")
    first = export(tmp_path / "first.npz")
    empty_the_gallery()
    import_file(tmp_path / "first.npz")
    second = export(tmp_path / "second.npz")

    assert second["names"].tolist() == first["names"].tolist()
    assert second["external_ids"].tolist() == first["external_ids"].tolist()
    assert second["embeddings"].tobytes() == first["embeddings"].tobytes()
    assert str(second["embedder"]) == str(first["embedder"])
    assert Person.objects.get(external_id="HR-0042").name == "Joe Biden"


def test_rows_of_one_name_are_one_person_and_an_existing_person_gets_the_faces(tmp_path):
    obama = Person.objects.get(name="Barack Obama")
    before = obama.faces.count()
    names = ["Barack Obama", "Barack Obama", "Ada Lovelace", "Ada Lovelace", "Ada Lovelace"]
    output = import_file(write_file(tmp_path / "new.npz", names, unit_vectors(5)))

    assert obama.faces.count() == before + 2
    ada = Person.objects.get(name="Ada Lovelace")
    assert ada.faces.in_gallery().count() == 3 and ada.legal_basis == "explicit_consent"
    assert "1 people created, 1 existing people given faces" in output


def test_an_external_id_finds_its_person_whatever_the_name(tmp_path):
    biden = Person.objects.get(name="Joe Biden")
    Person.objects.filter(pk=biden.pk).update(external_id="HR-7")
    before = biden.faces.count()
    names, external_ids = ["Joseph R. Biden", "Joe Biden"], ["HR-7", "HR-8"]
    output = import_file(write_file(tmp_path / "ids.npz", names, unit_vectors(2), external_ids=np.array(external_ids)))

    assert biden.faces.count() == before + 1 and Person.objects.get(pk=biden.pk).name == "Joe Biden"
    assert Person.objects.get(external_id="HR-8").name == "Joe Biden"  # another person of the same name
    assert "keep their name here" in output


def test_a_name_several_people_share_is_refused(tmp_path):
    Person.objects.create(name="Barack Obama", legal_basis="explicit_consent")
    with pytest.raises(CommandError, match="2 people here are named 'Barack Obama'"):
        import_file(write_file(tmp_path / "ambiguous.npz", ["Barack Obama"], unit_vectors(1)))


def test_unnormalized_rows_are_normalized_when_asked(tmp_path):
    path = write_file(tmp_path / "long.npz", ["Ada Lovelace"] * 2, unit_vectors(2) * 3)
    import_file(path, normalize=True)
    vectors = np.stack([f.vector for f in FaceImage.objects.filter(person__name="Ada Lovelace")])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


def _good(tmp_path, **changes) -> Path:
    arrays = {
        "names": np.array(["Ada Lovelace", "Alan Turing", "Alan Turing"]),
        "embeddings": unit_vectors(3),
        "embedder": np.array(served_embedder()),
    }
    arrays.update(changes)
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return path


def _nan(tmp_path):
    vectors = unit_vectors(3)
    vectors[1, 5] = np.nan
    return _good(tmp_path, embeddings=vectors)


def _pickled(tmp_path):
    names = np.empty(3, dtype=object)
    names[:] = [Canary(), "Alan Turing", "Alan Turing"]
    return _good(tmp_path, names=names)


def _not_a_zip(tmp_path):
    path = tmp_path / "bad.npz"
    path.write_bytes(b"PK\x03\x04 this is not really a zip")
    return path


def _missing_embedder(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, names=np.array(["Ada Lovelace"]), embeddings=unit_vectors(1))
    return path


@pytest.mark.parametrize(
    "make_file, message",
    [
        (lambda p: _good(p, embedder=np.array("arcface-r100-512")), "made by 'arcface-r100-512'; this site serves"),
        (lambda p: _good(p, embeddings=unit_vectors(3, dim=64)), "have 64 dimensions"),
        (_nan, "1 embeddings are not finite"),
        (lambda p: _good(p, embeddings=unit_vectors(3) * 1.01), "3 embeddings are not L2-normalized"),
        (lambda p: _good(p, embeddings=unit_vectors(3).astype(np.float64)), "must be float32"),
        (_pickled, "Python objects \\(a pickle\\), which is never loaded"),
        (lambda p: _good(p, names=np.array(["Ada Lovelace", "", "Alan Turing"])), "1 names are empty, the first in row 1"),
        (lambda p: _good(p, names=np.array(["Ada Lovelace", "   ", "Alan Turing"])), "1 names are empty"),
        (lambda p: _good(p, names=np.array(["Ada", "Alan"])), "one row per name"),
        (lambda p: _good(p, names=np.array([f"Ada Lovelace{'e' * 200}"] * 3)), "a name has at most 200"),
        (lambda p: _good(p, external_ids=np.array(["X1", "X1", "X2"])), "external id 'X1' is given to two names"),
        (_not_a_zip, "not a numpy .npz file"),
        (_missing_embedder, "the file has no embedder array"),
    ],
    ids=[
        "wrong-embedder",
        "wrong-dimension",
        "nan",
        "not-normalized",
        "float64",
        "pickled-object-array",
        "empty-name",
        "blank-name",
        "length-mismatch",
        "name-too-long",
        "external-id-of-two-names",
        "not-a-zip",
        "no-embedder",
    ],
)
def test_a_bad_file_is_refused_and_nothing_is_written(tmp_path, make_file, message):
    path = make_file(tmp_path)
    counts = (Person.objects.count(), FaceImage.objects.count(), AuditEvent.objects.count())
    with pytest.raises(CommandError, match=message) as refused:
        import_file(path)
    assert "Nothing was imported." in str(refused.value)
    assert (Person.objects.count(), FaceImage.objects.count(), AuditEvent.objects.count()) == counts
    assert UNPICKLED == []


def test_an_import_needs_a_legal_basis(tmp_path):
    path = write_file(tmp_path / "ok.npz", ["Ada Lovelace"], unit_vectors(1))
    with pytest.raises(CommandError, match="--legal-basis"):
        call_command("import_embeddings", str(path))
    with pytest.raises(CommandError, match="invalid choice: 'contract'"):
        call_command("import_embeddings", str(path), legal_basis="contract")
    assert not Person.objects.filter(name="Ada Lovelace").exists()


REFUSE_ZED = {
    "sqlite": [
        "CREATE TRIGGER refuse_zed BEFORE INSERT ON people_faceimage "
        "WHEN NEW.person_id = (SELECT id FROM people_person WHERE name = 'Zed Refused') "
        "BEGIN SELECT RAISE(ABORT, 'refused by the test trigger'); END"
    ],
    "postgresql": [
        "CREATE FUNCTION refuse_zed() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF NEW.person_id = (SELECT id FROM people_person WHERE name = 'Zed Refused') THEN "
        "RAISE EXCEPTION 'refused by the test trigger'; END IF; RETURN NEW; END $$",
        "CREATE TRIGGER refuse_zed BEFORE INSERT ON people_faceimage FOR EACH ROW EXECUTE FUNCTION refuse_zed()",
    ],
}


def test_a_database_refusal_midway_leaves_nothing(tmp_path):
    # A trigger (rolled back with the test) makes the database refuse one person's faces, in the
    # second batch of faces, after the people and the first batch were written.
    with connection.cursor() as cursor:
        for statement in REFUSE_ZED[connection.vendor]:
            cursor.execute(statement)
    names = ["Ada Lovelace", "Ada Lovelace", "Alan Turing", "Zed Refused", "Zed Refused"]
    path = write_file(tmp_path / "five.npz", names, unit_vectors(5))
    counts = (Person.objects.count(), FaceImage.objects.count(), AuditEvent.objects.count())
    with pytest.raises(
        CommandError, match="(?s)the database refused the import .*refused by the test trigger.*Nothing was imported"
    ):
        import_file(path, batch_size=2)
    assert (Person.objects.count(), FaceImage.objects.count(), AuditEvent.objects.count()) == counts


def test_five_thousand_faces_import_quickly(tmp_path):
    count = 5000
    names = [f"Synthetic Person {i // 5:04d}" for i in range(count)]
    path = write_file(tmp_path / "synthetic.npz", names, unit_vectors(count, seed=1))
    started = time.perf_counter()
    output = import_file(path)
    seconds = time.perf_counter() - started
    print(f"\n{count} faces in {seconds:.2f} s: {count / seconds:,.0f} faces/s ({output.strip()})")
    assert Person.objects.filter(name__startswith="Synthetic Person").count() == 1000
    assert FaceImage.objects.in_gallery().filter(person__name__startswith="Synthetic Person").count() == count
    # BENCHMARKS.md has the 100k figure; this only catches a fall back to row-by-row saving.
    assert count / seconds > 2000


def test_the_command_line_reports_a_bad_file_in_one_line(tmp_path):
    path = _pickled(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(SQLITE_PATH=str(tmp_path / "db.sqlite3"), MEDIA_ROOT=str(tmp_path / "media"), TF_CPP_MIN_LOG_LEVEL="3")
    manage = Path(__file__).resolve().parent.parent / "manage.py"
    result = subprocess.run(
        [sys.executable, str(manage), "import_embeddings", str(path), "--legal-basis", "explicit_consent"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 1
    assert "CommandError:" in result.stderr and "never loaded" in result.stderr and "Nothing was imported." in result.stderr
    assert "Traceback" not in result.stderr


def test_reprocessing_an_imported_face_keeps_it_in_the_gallery(tmp_path, admin_client, django_capture_on_commit_callbacks):
    """An imported face has no photo to re-read: "Re-process" leaves it (and its embedding) alone."""
    write_file(tmp_path / "one.npz", ["Imported Only"], unit_vectors(1, seed=7))
    import_file(tmp_path / "one.npz")
    face = FaceImage.objects.get(person__name="Imported Only")
    before = bytes(face.embedding)
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            "/admin/people/faceimage/", {"action": "reprocess", "_selected_action": [face.pk]}, follow=True
        )
    assert "1 face(s) have no original photo on file and were left as they are." in response.content.decode()
    face.refresh_from_db()
    assert face.status == FaceImage.Status.ACCEPTED and bytes(face.embedding) == before
    from recognition import tasks

    assert tasks.process_face_image(face.pk) == "no photo on file"  # a task queued before still leaves it
    face.refresh_from_db()
    assert face.status == FaceImage.Status.ACCEPTED and bytes(face.embedding) == before
