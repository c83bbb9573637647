"""The gallery's face embeddings to and from one .npz file, without photos.

Used by ``manage.py export_embeddings`` / ``import_embeddings`` to restore or move a gallery between
installations and to build benchmark galleries. The file holds biometric templates: it identifies
people as surely as their photos do (special-category data, GDPR Art. 9), so it is written
readable by its owner only, and every export and import leaves an audit event (counts, no names).

The file (numpy ``.npz``; never pickled objects: it is read with ``allow_pickle=False``):

- ``names`` (N,) str: the person of each face.
- ``embeddings`` (N, D) float32, L2-normalized.
- ``embedder`` () str: the embedder that made them (``FaceImage.embedder``).
- ``external_ids`` (N,) str, optional: "" where a person has none.
- ``face_ids`` (N,) int64: written on export (the exporting site's ids), not read on import.

Which rows are one person: rows with the same external id, else (no external id) the same name.
The existing person with that external id, else the one existing person of that name, gets the
faces; otherwise the person is created, with the import's legal basis.
"""

from __future__ import annotations

import contextlib
import getpass
import itertools
import os
import tempfile
import time
import uuid
import zipfile
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from security.models import AuditEvent

from . import services
from .models import FaceImage, GalleryChange, Person

NAME_MAX = Person._meta.get_field("name").max_length
EXTERNAL_ID_MAX = Person._meta.get_field("external_id").max_length
NORM_TOLERANCE = 1e-3
MAX_DIM = 4096
DEFAULT_BATCH_SIZE = 5000
# An import of more people than this is logged as one BULK change (each process reloads the
# gallery in the background, from the snapshot the import queues), fewer as one row per person.
BULK_CHANGE_MAX_PEOPLE = 2000
# Rows per query when looking people up by name or external id (SQLite allows 999 parameters).
_LOOKUP_CHUNK = 500


class BulkError(Exception):
    """An export or import refused; the message says why, in the command line's words."""


@dataclass(frozen=True)
class Embeddings:
    """A gallery's faces as arrays: row i is a face of ``names[i]``."""

    names: np.ndarray  # (N,) str
    embeddings: np.ndarray  # (N, D) float32, L2-normalized
    embedder: str
    external_ids: np.ndarray  # (N,) str, "" where none
    face_ids: np.ndarray | None = None  # (N,) int64, the exporting site's FaceImage ids

    def __len__(self) -> int:
        return len(self.names)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])


# ---- export ----------------------------------------------------------------------------------------


@dataclass
class ExportReport:
    faces: int
    people: int
    embedder: str
    dim: int
    # names shared by several people who have no external id: an import makes each name one person
    merged_names: int = 0
    seconds: float = 0.0


def export_gallery(path: Path, force: bool = False) -> ExportReport:
    """Write the gallery (accepted faces of active people) to ``path`` and audit it; BulkError if refused."""
    started = time.perf_counter()
    path = Path(path)
    _check_target(path, force)
    data, person_ids = _gallery()
    write_embeddings(data, path, force=force)
    report = ExportReport(
        faces=len(data),
        people=len(np.unique(person_ids)),
        embedder=data.embedder,
        dim=data.dim,
        merged_names=_names_of_several_people(data, person_ids),
    )
    _audit("export_embeddings", report)
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def _gallery() -> tuple[Embeddings, np.ndarray]:
    """The faces recognition matches against, ordered by person and id, and their person ids."""
    rows = (
        FaceImage.objects.in_gallery()
        .order_by("person_id", "id")
        .values_list("id", "person_id", "person__name", "person__external_id", "embedder", "embedding")
    )
    ids, person_ids, names, external_ids, blobs = [], [], [], [], []
    embedders: Counter = Counter()
    with transaction.atomic():  # one snapshot of the gallery
        for face_id, person_id, name, external_id, embedder, blob in rows.iterator(chunk_size=10_000):
            ids.append(face_id)
            person_ids.append(person_id)
            names.append(name)
            external_ids.append(external_id or "")
            embedders[embedder] += 1
            blobs.append(bytes(blob))
    if not ids:
        raise BulkError("the gallery is empty: there is nothing to export.")
    if len(embedders) > 1:
        found = ", ".join(f"{name or '(not recorded)'} x{n}" for name, n in embedders.most_common())
        raise BulkError(f"the gallery holds embeddings of several embedders ({found}); re-process the others' photos first.")
    (embedder,) = embedders
    if not embedder:
        raise BulkError("the gallery's faces do not record their embedder; re-process their photos first.")
    sizes = {len(blob) for blob in blobs}
    if len(sizes) > 1 or min(sizes) % 4:
        raise BulkError(f"the gallery's embeddings differ in size ({sorted(sizes)} bytes); re-process their photos first.")
    data = Embeddings(
        names=np.array(names, dtype=str),
        embeddings=np.frombuffer(b"".join(blobs), np.float32).reshape(len(ids), min(sizes) // 4),
        embedder=embedder,
        external_ids=np.array(external_ids, dtype=str),
        face_ids=np.array(ids, np.int64),
    )
    return data, np.array(person_ids, np.int64)


def _names_of_several_people(data: Embeddings, person_ids: np.ndarray) -> int:
    people_by_name = defaultdict(set)
    for name, external_id, person_id in zip(data.names.tolist(), data.external_ids.tolist(), person_ids.tolist()):
        if not external_id:
            people_by_name[name].add(person_id)
    return sum(1 for people in people_by_name.values() if len(people) > 1)


def _check_target(path: Path, force: bool) -> None:
    if path.is_dir():
        raise BulkError(f"{path} is a directory; name the .npz file to write.")
    if not path.parent.is_dir():
        raise BulkError(f"{path.parent} is not a directory.")
    if path.exists() and not force:
        raise BulkError(f"{path} exists; pass --force to replace it.")


def write_embeddings(data: Embeddings, path: Path, force: bool = False) -> None:
    """Write ``data`` to ``path`` at once or not at all (a temporary file renamed over it), mode 0600."""
    path = Path(path)
    _check_target(path, force)
    arrays = {
        "names": data.names,
        "embeddings": np.ascontiguousarray(data.embeddings, np.float32),
        "embedder": np.array(data.embedder, dtype=str),
        "external_ids": data.external_ids,
    }
    if data.face_ids is not None:
        arrays["face_ids"] = data.face_ids
    # mkstemp creates the file readable and writable by its owner only: it holds biometric templates.
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


# ---- reading and checking a file -------------------------------------------------------------------


def read_embeddings(path: Path, max_faces: int, normalize: bool = False) -> Embeddings:
    """Read and check an embeddings file; BulkError says what is wrong with it.

    Shapes and types are checked from the arrays' headers before their data is read, so a file
    cannot make this allocate more than ``max_faces`` rows; object arrays (pickles) are refused
    unread. ``normalize`` divides each row by its norm instead of refusing rows that are not unit
    length (|norm - 1| > 0.001)."""
    path = Path(path)
    if not path.is_file():
        raise BulkError(f"{path}: no such file.")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise BulkError(f"{path} is not a numpy .npz file ({err}).")
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise BulkError(f"{path} is a single array (.npy); expected an .npz with names, embeddings and embedder.")
    with archive:
        missing = [key for key in ("names", "embeddings", "embedder") if key not in archive.files]
        if missing:
            raise BulkError(f"the file has no {', '.join(missing)} array (it has: {', '.join(archive.files) or 'nothing'}).")
        keys = ["names", "embeddings", "embedder"] + (["external_ids"] if "external_ids" in archive.files else [])
        headers = {key: _header(archive, key) for key in keys}
        _check_headers(headers, max_faces)
        try:
            arrays = {key: archive[key] for key in keys}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise BulkError(f"the file is damaged ({err}).")

    names = arrays["names"]
    embeddings = np.ascontiguousarray(arrays["embeddings"], dtype=np.float32)
    embedder = str(arrays["embedder"][()])
    external_ids = arrays.get("external_ids", np.full(len(names), "", dtype="<U1"))
    if not embedder.strip():
        raise BulkError("embedder is empty; it must name the embedder that made the embeddings.")
    _check_texts(names, "names", NAME_MAX, empty_allowed=False)
    _check_texts(external_ids, "external_ids", EXTERNAL_ID_MAX, empty_allowed=True)

    finite = np.isfinite(embeddings).all(axis=1)
    if not finite.all():
        rows = np.flatnonzero(~finite)
        raise BulkError(f"{len(rows)} embeddings are not finite (NaN or infinity), the first in row {rows[0]}.")
    norms = np.sqrt(np.einsum("ij,ij->i", embeddings, embeddings))  # float32 is ample for a 1e-3 tolerance
    if normalize:
        if (norms < 1e-6).any():
            raise BulkError(f"row {int(np.argmax(norms < 1e-6))}'s embedding is zero; it cannot be normalized.")
        embeddings = embeddings / norms[:, None]
    else:
        off = np.abs(norms - 1.0) > NORM_TOLERANCE
        if off.any():
            first = int(np.argmax(off))
            raise BulkError(
                f"{int(off.sum())} embeddings are not L2-normalized (|norm - 1| > {NORM_TOLERANCE:g}), the first in "
                f"row {first} (norm {norms[first]:.4f}); pass --normalize to divide each row by its norm."
            )
    return Embeddings(names=names, embeddings=embeddings, embedder=embedder, external_ids=external_ids)


def _header(archive, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """An array's shape and dtype from its .npy header, its data unread."""
    try:
        with archive.zip.open(f"{key}.npy") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise BulkError(f"{key} is stored in .npy format {version[0]}.{version[1]}; save it with numpy's np.savez.")
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
        raise BulkError(f"{key} is not a readable .npy array ({err}).")
    return shape, dtype


def _check_headers(headers: dict, max_faces: int) -> None:
    for key, (_, dtype) in headers.items():
        if dtype.hasobject:
            raise BulkError(
                f"{key} is an array of Python objects (a pickle), which is never loaded; "
                "save text as a unicode array (np.array(values, dtype=str)) and numbers as float32."
            )
    names_shape, names_dtype = headers["names"]
    if len(names_shape) != 1 or names_dtype.kind != "U":
        raise BulkError(f"names must be a (N,) unicode string array; it is {names_shape} of {names_dtype}.")
    count = names_shape[0]
    if count == 0:
        raise BulkError("the file holds no faces.")
    if count > max_faces:
        raise BulkError(f"the file holds {count:,} faces; at most {max_faces:,} are imported at once (FACE_IMPORT_MAX_FACES).")
    if names_dtype.itemsize // 4 > NAME_MAX:
        raise BulkError(f"names are up to {names_dtype.itemsize // 4} characters wide; a name has at most {NAME_MAX}.")
    shape, dtype = headers["embeddings"]
    if len(shape) != 2 or shape[0] != count or not 0 < shape[1] <= MAX_DIM:
        raise BulkError(f"embeddings must be ({count}, D), one row per name; they are {shape}.")
    if dtype.kind != "f" or dtype.itemsize != 4:
        raise BulkError(f"embeddings must be float32; they are {dtype} (convert with .astype(np.float32)).")
    shape, dtype = headers["embedder"]
    if shape != () or dtype.kind != "U" or dtype.itemsize // 4 > 200:
        raise BulkError(f"embedder must be one unicode string (np.array('name')); it is {shape} of {dtype}.")
    if "external_ids" in headers:
        shape, dtype = headers["external_ids"]
        if shape != (count,) or dtype.kind != "U" or dtype.itemsize // 4 > EXTERNAL_ID_MAX:
            raise BulkError(
                f"external_ids must be ({count},) unicode strings of at most {EXTERNAL_ID_MAX} characters; they are {shape} of {dtype}."
            )


def _check_texts(values: np.ndarray, key: str, max_length: int, empty_allowed: bool) -> None:
    if not empty_allowed:
        empty = np.char.str_len(np.char.strip(values)) == 0
        if empty.any():
            raise BulkError(f"{int(empty.sum())} {key} are empty, the first in row {int(np.argmax(empty))}.")
    for text in set(values.tolist()):
        if len(text) > max_length:
            raise BulkError(f"{key} holds a value of {len(text)} characters; at most {max_length} are allowed.")
        if not text.isprintable():
            raise BulkError(f"{key} holds {text!r}, with control characters.")


def check_embedder(data: Embeddings, embedder: str, dim: int) -> None:
    """Refuse embeddings made by another embedder than the one served (``embedder``, ``dim``-d):
    they are not comparable with the faces it embeds, so every match would be wrong."""
    if data.dim != dim:
        raise BulkError(f"the file's embeddings have {data.dim} dimensions; the served embedder {embedder!r} makes {dim}.")
    if data.embedder != embedder:
        raise BulkError(
            f"the file's embeddings were made by {data.embedder!r}; this site serves {embedder!r}. Embeddings of "
            "another embedder cannot be compared with its faces: enroll the photos instead (import_faces)."
        )


def _people_of_rows(names: np.ndarray, external_ids: np.ndarray) -> tuple[list[tuple[str, str]], np.ndarray]:
    """The people of the file, as (external id or "", name), and each row's index among them."""
    people: list[tuple[str, str]] = []
    index: dict[tuple[str, str], int] = {}
    row_person = np.empty(len(names), np.int64)
    for row, (name, external_id) in enumerate(zip(names.tolist(), external_ids.tolist())):
        key = (external_id, "") if external_id else ("", name)
        found = index.get(key)
        if found is None:
            found = index[key] = len(people)
            people.append((external_id, name))
        elif external_id and people[found][1] != name:
            raise BulkError(f"external id {external_id!r} is given to two names, {people[found][1]!r} and {name!r} (row {row}).")
        row_person[row] = found
    return people, row_person


# ---- import ----------------------------------------------------------------------------------------


@dataclass
class ImportReport:
    faces: int
    people_created: int
    people_extended: int  # existing people who got faces
    inactive_people: int  # of those, inactive ones: their faces are not served until reactivated
    names_kept: int  # existing people matched by external id whose name in the file differs (theirs kept)
    embedder: str
    dim: int
    seconds: float = 0.0


def import_embeddings(data: Embeddings, legal_basis: str, batch_size: int = DEFAULT_BATCH_SIZE, source: str = "") -> ImportReport:
    """Add ``data``'s faces to the gallery as accepted faces without photos, all or nothing.

    Checked first with ``read_embeddings`` and ``check_embedder``. People are found or created
    as the module docstring says; ``legal_basis`` is recorded on those created. One transaction:
    any failure leaves the database as it was. Every process serves the faces from its next
    request (the gallery's freshness check), and one retrain is queued."""
    started = time.perf_counter()
    people, row_person = _people_of_rows(data.names, data.external_ids)
    try:
        with transaction.atomic():
            person_ids, report = _find_or_create_people(people, legal_basis, batch_size, source)
            report.faces, report.embedder, report.dim = len(data), data.embedder, data.dim
            _create_faces(data, person_ids[row_person], batch_size, source)
            services.gallery_changed()  # the same notice enrollment gives: one retrain, after commit
            _audit("import_embeddings", report)
            # last in the transaction: every process applies these people (or, for many, reloads)
            changed = np.unique(person_ids)
            if len(changed) <= BULK_CHANGE_MAX_PEOPLE:
                GalleryChange.objects.record(GalleryChange.Kind.FACE, changed.tolist())
            else:
                GalleryChange.objects.record(GalleryChange.Kind.BULK)
                transaction.on_commit(services.queue_gallery_snapshot)  # the next start maps it
    except DatabaseError as err:
        raise BulkError(f"the database refused the import ({err}).")
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def _find_or_create_people(people: list[tuple[str, str]], legal_basis: str, batch_size: int, source: str):
    by_external_id: dict[str, tuple[int, str, bool]] = {}
    wanted = [external_id for external_id, _ in people if external_id]
    for chunk in _chunks(wanted, _LOOKUP_CHUNK):
        for pk, external_id, name, active in Person.objects.filter(external_id__in=chunk).values_list(
            "id", "external_id", "name", "is_active"
        ):
            by_external_id[external_id] = (pk, name, active)
    by_name = _people_named({name for external_id, name in people if not external_id})

    person_ids = np.zeros(len(people), np.int64)
    report = ImportReport(0, 0, 0, 0, 0, "", 0)
    new_people: dict[tuple[str, str], int] = {}
    for position, (external_id, name) in enumerate(people):
        if external_id and external_id in by_external_id:
            pk, existing_name, active = by_external_id[external_id]
            report.names_kept += existing_name != name
        elif not external_id and len(by_name.get(name, ())) == 1:
            pk, active = by_name[name][0]
        elif not external_id and by_name.get(name):
            raise BulkError(
                f"{len(by_name[name])} people here are named {name!r}; give the file's rows external ids to say which."
            )
        else:
            new_people[(external_id, name)] = position
            continue
        person_ids[position] = pk
        report.people_extended += 1
        report.inactive_people += not active

    if new_people:
        # The import's own note tells its new people apart, so their ids are read back in one query.
        template = Person(notes=f"Imported from {source or 'a file'} (import {uuid.uuid4().hex[:12]})"[:1000])
        template.record_legal_basis(legal_basis)
        _insert_rows(Person, template, ("name", "external_id"), [(n, e or None) for e, n in new_people], batch_size)
        for pk, external_id, name in Person.objects.filter(notes=template.notes).values_list("id", "external_id", "name"):
            person_ids[new_people[(external_id or "", name)]] = pk
        report.people_created = len(new_people)
    return person_ids, report


def _people_named(names: set[str]) -> dict[str, list[tuple[int, bool]]]:
    """Existing people with these names, as (id, is_active). Names are not indexed, so each query
    scans the table: many names are found in one pass over all people instead of many queries."""
    if len(names) > 10 * _LOOKUP_CHUNK:
        rows = Person.objects.values_list("id", "name", "is_active").iterator(chunk_size=10_000)
    else:
        rows = itertools.chain.from_iterable(
            Person.objects.filter(name__in=chunk).values_list("id", "name", "is_active")
            for chunk in _chunks(sorted(names), _LOOKUP_CHUNK)
        )
    found = defaultdict(list)
    for pk, name, active in rows:
        if name in names:
            found[name].append((pk, active))
    return found


def _create_faces(data: Embeddings, person_ids: np.ndarray, batch_size: int, source: str) -> None:
    template = FaceImage(
        status=FaceImage.Status.ACCEPTED,
        embedder=data.embedder,
        original_name=services.safe_name(f"imported from {source}" if source else "imported"),
        processed_at=timezone.now(),
    )
    blob, size = data.embeddings.tobytes(), data.dim * 4
    rows = ((person_id, blob[row * size : (row + 1) * size]) for row, person_id in enumerate(person_ids.tolist()))
    _insert_rows(FaceImage, template, ("person_id", "embedding"), rows, batch_size)


def _insert_rows(model, template, varying: tuple[str, ...], rows, batch_size: int) -> None:
    """INSERT ``rows`` (tuples of the ``varying`` attributes) of ``model``; every other column as in
    ``template``, prepared once by its field (defaults, auto_now dates, the backend's formats).

    Not ``bulk_create``: it compiles every value of every row and sends 999 parameters per
    statement on SQLite, 2,800 faces/s measured here (BENCHMARKS.md, "Bulk embeddings"). The rows
    are plain values (ids, text, bytes) the driver adapts itself: executemany on SQLite, COPY on
    PostgreSQL (executemany there sends a statement per row). Like ``bulk_create``, no signals."""
    fields = [f for f in model._meta.concrete_fields if not f.primary_key]
    constant = tuple(f.get_db_prep_save(f.pre_save(template, add=True), connection) for f in fields if f.attname not in varying)
    columns = [f.column for f in fields if f.attname not in varying] + [model._meta.get_field(name).column for name in varying]
    quote = connection.ops.quote_name
    table, names = quote(model._meta.db_table), ", ".join(quote(column) for column in columns)
    rows = iter(rows)
    with connection.cursor() as cursor:
        driver_cursor = cursor.cursor
        if connection.vendor == "postgresql" and hasattr(driver_cursor, "copy"):  # psycopg 3
            # the driver's own cursor: its errors become Django's (DatabaseError) here, as through the ORM
            with connection.wrap_database_errors, driver_cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(constant + tuple(row))
            return
        sql = f"INSERT INTO {table} ({names}) VALUES ({', '.join(['%s'] * len(columns))})"
        while batch := [constant + tuple(row) for row in itertools.islice(rows, batch_size)]:
            cursor.executemany(sql, batch)


def _chunks(values: list, size: int):
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _audit(action: str, report: ExportReport | ImportReport) -> None:
    """The receipt of an export or import: who ran it and the counts; no name, no embedding."""
    result = {key: value for key, value in asdict(report).items() if key != "seconds"}
    try:
        user = getpass.getuser()
    except Exception:  # no login name in some containers
        user = "unknown user"
    AuditEvent.objects.create(action=action, actor=f"manage.py {action} as {user}"[:200], status_code=200, result=result)
