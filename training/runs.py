"""One training run: gather the gallery, compare recognizers on a held-out split, calibrate the
threshold, export for edge clients, and activate the result if it is not worse than the active one.

Every stage reports progress (and a heartbeat) to the version's row, so the admin and the API show
where a run is, and a dead worker can be told from a slow one.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from recognition import pipelines
from recognition.engine.fused import FUSED_EMBEDDER
from recognition.engine.matching import embeddings_from_blobs
from recognition.engine.open_set import ImpostorTail, cross_person_scores
from training.engine import evaluation
from training.engine.comparison import choose_production, compare, truth_of
from training.engine.dataset import FaceSet, sample_people, split_per_person
from training.engine.export import cached_dlib_tflite, cached_embedder_tflite, fused_template, sha256_bytes
from training.engine.heads import NearestNeighbour, SoftmaxHead

from . import redaction
from .models import ModelVersion

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


class TrainingRun:
    def __init__(self, version_id: int):
        self.version = ModelVersion.objects.get(pk=version_id)
        self.lines: list[str] = []
        self.threshold_notes: list[str] = []
        self.open_set: dict = {}
        self.timings: dict[str, float] = {}
        self._stage_started = time.perf_counter()

    # ---- progress ------------------------------------------------------------------------------

    def report(self, stage: str, progress: int, line: str = "") -> None:
        now = time.perf_counter()
        previous = self.version.stage
        if previous and previous != stage:
            self.timings[previous] = round(self.timings.get(previous, 0.0) + now - self._stage_started, 3)
            self._stage_started = now
        if line:
            self.lines.append(f"{timezone.now():%H:%M:%S} {line}")
        self.version.stage, self.version.progress = stage, progress
        ModelVersion.objects.filter(pk=self.version.pk).update(
            stage=stage, progress=progress, heartbeat_at=timezone.now(), log="\n".join(self.lines), timings=self.timings
        )

    # ---- the run -------------------------------------------------------------------------------

    def run(self) -> None:
        target_far = settings.TRAINING_TARGET_FAR
        self.report("gathering", 2, "Reading the accepted faces of active people.")
        faces, names = self.gather()
        people = len(np.unique(faces.labels))
        ModelVersion.objects.filter(pk=self.version.pk).update(people_count=people, image_count=len(faces))
        self.report("gathering", 8, f"{len(faces)} faces of {people} people.")
        if people < 2:
            raise ValueError(f"At least two enrolled people are needed to train; there are {people}.")

        self.open_set = self.site_tail(faces)
        self.report("unknown faces", 10)
        unknown = self.unknown_faces(set(names.values()))
        n_unknown = 0 if unknown is None else len(unknown)
        self.report("unknown faces", 20, f"{n_unknown} faces of people not enrolled, for unknown rejection.")

        evaluated, only = self.evaluation_scope(faces, people)
        split = split_per_person(evaluated, settings.TRAINING_HELD_OUT_FRACTION, seed=self.version.number)
        self.report(
            "comparing",
            22,
            f"Split: {len(split.train)} training and {len(split.held_out)} held-out faces; "
            f"{len(split.train_only_people)} people have one image and are training-only (not evaluated).",
        )
        steps = iter(range(25, 70, 7))
        comparison = compare(
            split,
            unknown,
            target_far,
            only=only,
            progress=lambda name: self.report("comparing", next(steps, 69), f"Fitting {name}."),
        )
        # each served recognizer's threshold is checked before the choice, so they compete as served
        for name, (setting, floor) in self.threshold_floors().items():
            if name in comparison.outcomes and comparison.outcomes[name].evaluation is not None:
                self.guard_threshold(comparison.outcomes[name], target_far, setting, floor)
        comparison.production, comparison.reason = choose_production(comparison, settings.TRAINING_RECOGNIZER)
        production = comparison.outcomes[comparison.production]
        chosen = production.evaluation
        self.report("calibrating", 72, f"Production recognizer: {comparison.production}. {comparison.reason}")

        decision, note, previous_score = self.decide(split, unknown, comparison)
        self.report("plots", 76)
        class_names = [names.get(int(p), f"#{p}") for p in production.fitted.classes]
        confusion = evaluation.confusion_png(chosen.confusion, class_names)
        roc = evaluation.roc_png(
            {n: o.evaluation.roc for n, o in comparison.outcomes.items() if o.evaluation is not None}, threshold_fpr=target_far
        )

        self.report(
            "exporting",
            80,
            "Exporting the edge model (TFLite embedder and label map). The first time this is a one-time "
            "conversion of a few minutes; later runs reuse it.",
        )
        exported = self.export_tflite()
        self.report("exporting", 92)
        labels = self.label_map(faces, comparison, exported)
        # compact: with indent json falls back to its pure-Python encoder, minutes for a large gallery
        labels_bytes = json.dumps(labels, separators=(",", ":")).encode()

        metrics = chosen.as_dict()
        metrics.update(
            {
                "train_faces": len(split.train),
                "held_out_faces": len(split.held_out),
                "unknown_faces": n_unknown,
                "train_only_people": split.train_only_people,
                "open_set_score": evaluation.open_set_score(chosen),
                "threshold_note": " ".join(self.threshold_notes) or "Calibrated on held-out data.",
                "active_version_open_set_score": previous_score,
                "people_names": {str(k): v for k, v in names.items()},
            }
        )
        self.report("saving", 96)
        self.finish(decision, note, comparison, metrics, exported, labels_bytes, confusion, roc)

    def site_tail(self, faces: FaceSet) -> dict:
        """The impostor tail of the site's own people: cosine scores of faces of different people
        (a fixed-seed sample of at most OPEN_SET_SITE_MAX_FACES faces, so bounded at any size). Only
        the scores' distribution is kept: no name, id or embedding."""
        scores = cross_person_scores(faces.embeddings, faces.labels, settings.OPEN_SET_SITE_MAX_FACES, seed=self.version.number)
        needed = settings.OPEN_SET_SITE_MIN_PAIRS
        if len(scores) < needed:
            self.lines.append(
                f"{len(scores)} cross-person pairs are too few for the site's own impostor tail "
                f"(OPEN_SET_SITE_MIN_PAIRS {needed}): the open set is calibrated on LFW strangers alone."
            )
            return {"site_pairs": int(len(scores))}
        tail = ImpostorTail.from_scores(scores, source=f"site: {len(scores)} cross-person pairs")
        self.lines.append(f"Site impostor tail: {len(scores)} cross-person pairs, top score {float(scores.max()):.3f}.")
        return {"site_pairs": int(len(scores)), "site_tail": tail.as_dict()}

    def evaluation_scope(self, faces: FaceSet, people: int) -> tuple[FaceSet, tuple[str, ...]]:
        """The faces the comparison is fitted and evaluated on, and the approaches compared.

        Evaluation scores every held-out probe against every person (a probes x people matrix and a
        people x people confusion matrix), so past TRAINING_EVAL_MAX_PEOPLE people it runs on a
        fixed-seed sample of that many people (all their faces), and only nearest neighbour is
        compared: a softmax head, triplet adapter or Siamese head fitted on a sample would not know
        the people outside it (so could not be served), and fitting them on everyone grows with
        people x faces. The open-set threshold for the whole gallery comes from the per-search
        calibration (training.open_set), not from this sample."""
        only = ("nearest_neighbour", *settings.TRAINING_APPROACHES)
        limit = settings.TRAINING_EVAL_MAX_PEOPLE
        if people <= limit:
            return faces, only
        sample = sample_people(faces, limit, seed=self.version.number)
        skipped = sorted(set(only) - {"nearest_neighbour"})
        note = (
            f"{people} people is more than TRAINING_EVAL_MAX_PEOPLE ({limit}): evaluated on a sample of {limit} people "
            f"({len(sample)} faces); only nearest neighbour is compared"
            + (f" ({', '.join(skipped)} skipped: fitted on a sample they could not serve everybody)." if skipped else ".")
        )
        self.threshold_notes.append(note)
        self.lines.append(note)
        return sample, ("nearest_neighbour",)

    @staticmethod
    def threshold_floors() -> dict[str, tuple[str, float]]:
        """The setting that bounds each servable recognizer's threshold when calibration is not trusted."""
        return {
            "nearest_neighbour": ("FACE_MATCH_THRESHOLD (per embedder)", pipelines.match_threshold_floor()),
            "softmax_head": ("TRAINING_HEAD_MIN_PROBABILITY", float(settings.TRAINING_HEAD_MIN_PROBABILITY)),
        }

    def guard_threshold(self, outcome, target_far: float, setting: str, floor: float) -> None:
        """With fewer impostor searches than 1 / target FAR, the FAR at the target cannot be measured
        and the calibrated threshold (just above the highest impostor seen) can sit far too low for
        strangers: keep at least the configured floor and report metrics there."""
        needed = int(np.ceil(1.0 / target_far)) if target_far > 0 else 0
        calibrated = outcome.evaluation.threshold
        if outcome.evaluation.n_impostor >= needed or calibrated is None or calibrated >= floor:
            return
        outcome.evaluation = evaluation.evaluate(
            outcome.scores, outcome.truth, [int(c) for c in outcome.fitted.classes], target_far, threshold=floor
        )
        note = (
            f"{outcome.name}: only {outcome.evaluation.n_impostor} impostor searches (FAR {target_far:.1%} needs {needed}): "
            f"the calibrated threshold {calibrated:.3f} is not trusted; {setting} {floor:.3f} is used."
        )
        self.threshold_notes.append(note)
        self.report("calibrating", 71, note)

    def gather(self) -> tuple[FaceSet, dict[int, str]]:
        """A snapshot of the gallery: later enrollments or erasures do not touch this run."""
        from people.models import FaceImage, Person

        rows = list(FaceImage.objects.in_gallery().order_by("id").values_list("id", "person_id", "embedding", "crop"))
        names = dict(Person.objects.filter(pk__in={r[1] for r in rows}).values_list("id", "name"))
        if not rows:
            dim = pipelines.pipeline_config().dim
            return FaceSet(np.zeros((0, dim), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64), None), names
        keys, labels, blobs, crop_names = zip(*rows)
        del rows
        embeddings = embeddings_from_blobs(blobs, dim=pipelines.pipeline_config().dim)
        del blobs
        stacked = None
        if not {"lbph", "eigenfaces"} & set(settings.TRAINING_APPROACHES):
            pass
        elif len(keys) > settings.TRAINING_PIXEL_MAX_FACES:
            # every crop in memory (77 KB each) and one file read per face: bounded by a size
            self.lines.append(
                f"{len(keys)} faces is more than TRAINING_PIXEL_MAX_FACES ({settings.TRAINING_PIXEL_MAX_FACES}): "
                "the pixel baselines (LBPH, Eigenfaces) are skipped."
            )
        else:
            crops = [_read_crop(name) for name in crop_names]
            stacked = None if any(c is None for c in crops) else np.stack(crops)
            if stacked is None:
                self.lines.append("Some face crops are missing: the pixel baselines (LBPH, Eigenfaces) are skipped.")
        return FaceSet(embeddings, np.array(labels, np.int64), np.array(keys, np.int64), stacked), names

    def unknown_faces(self, enrolled_names: set[str]) -> FaceSet | None:
        """Faces of people not enrolled (one image per person folder, e.g. LFW), if configured."""
        folder = settings.TRAINING_UNKNOWN_FACES_DIR
        if not folder or not Path(folder).is_dir():
            return None
        enrolled = {_name_key(n) for n in enrolled_names}
        images = []
        for person_dir in sorted(p for p in Path(folder).iterdir() if p.is_dir()):
            if _name_key(person_dir.name) in enrolled:
                continue
            first = next((f for f in sorted(person_dir.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES), None)
            if first is not None:
                images.append(first)
            if len(images) >= settings.TRAINING_UNKNOWN_MAX_IMAGES:
                break
        cache = self._unknown_cache(images)
        if cache.exists():
            with np.load(cache) as stored:
                return FaceSet(
                    stored["embeddings"],
                    np.full(len(stored["embeddings"]), -1, np.int64),
                    -np.arange(1, len(stored["embeddings"]) + 1),
                    stored["crops"],
                )
        embeddings, crops = [], []
        for i, path in enumerate(images):
            try:
                face, _ = pipelines.main_face(pipelines.read_upload(path.read_bytes()))
            except Exception:
                continue  # an unreadable file is not a reason to fail the run
            if face is not None:
                embeddings.append(face.embedding)
                crops.append(face.crop)
            if i % 20 == 0:
                self.report("unknown faces", 10 + int(10 * i / max(len(images), 1)))
        n = len(embeddings)
        embeddings = np.array(embeddings, np.float32).reshape(n, pipelines.pipeline_config().dim)
        crops = np.array(crops, np.uint8).reshape(n, 160, 160, 3)
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_name(f"{cache.stem}.{self.version.pk}.part.npz")
        np.savez_compressed(partial, embeddings=embeddings, crops=crops)
        partial.replace(cache)
        return FaceSet(embeddings, np.full(n, -1, np.int64), -np.arange(1, n + 1), crops)

    def _unknown_cache(self, images: list[Path]) -> Path:
        """Unknown faces are the same images run after run: embed them once per file list and embedder."""
        import hashlib

        text = "\n".join([pipelines.pipeline_config().embedder_name, *(str(p) for p in images)])
        return Path(settings.TRAINING_CACHE_DIR) / f"unknown-faces-{hashlib.sha256(text.encode()).hexdigest()[:24]}.npz"

    def decide(self, split, unknown, comparison) -> tuple[bool, str, float | None]:
        """Activate when not worse than the active version on the same held-out data, or when forced."""
        new_score = evaluation.open_set_score(comparison.outcomes[comparison.production].evaluation)
        active = ModelVersion.objects.active()
        if active is None:
            return True, "Activated: there was no active version.", None
        old_score = self.score_of(active, split, unknown, comparison)
        if self.version.force_activate:
            return (
                True,
                f"Activated by staff (forced); open-set score {new_score:.3f} vs active v{active.number}'s {old_score:.3f}.",
                old_score,
            )
        if new_score >= old_score - 1e-9:
            return (
                True,
                f"Activated: open-set score {new_score:.3f} is not worse than active v{active.number}'s {old_score:.3f} on the same held-out data.",
                old_score,
            )
        return (
            False,
            f"Not activated: open-set score {new_score:.3f} is worse than active v{active.number}'s {old_score:.3f} on the same held-out data.",
            old_score,
        )

    def score_of(self, version: ModelVersion, split, unknown, comparison) -> float:
        """The active version's recognizer and threshold on this run's split: its kind of recognizer
        fitted on these training faces, scored on these held-out faces at its own threshold (a
        stored head is not reused: this run's held-out faces may have been its training faces)."""
        probes = split.held_out
        embeddings, labels = probes.embeddings, probes.labels
        if unknown is not None and len(unknown):
            embeddings = np.concatenate([embeddings, unknown.embeddings])
            labels = np.concatenate([labels, np.full(len(unknown), -(1 << 40))])
        if version.recognizer == ModelVersion.Recognizer.SOFTMAX_HEAD and version.head_threshold is not None:
            fitted = getattr(comparison.outcomes.get("softmax_head"), "fitted", None)
            recognizer = fitted if fitted is not None else SoftmaxHead().fit(split.train)
            threshold = version.head_threshold
        else:
            recognizer = NearestNeighbour().fit(split.train)
            threshold = version.threshold if version.threshold is not None else pipelines.match_threshold_floor()
        scores = recognizer.scores(embeddings)
        result = evaluation.evaluate(scores, truth_of(labels, recognizer.classes), list(recognizer.classes), threshold=threshold)
        return evaluation.open_set_score(result)

    def export_tflite(self) -> dict[str, tuple[str, str]]:
        """The edge models as TFLite, each stored once per content under MEDIA_ROOT/models/embedders/:
        ``{"facenet": (storage name, sha256)}``, and on a fused site ``"dlib"`` too (dlib's network,
        from which with the FaceNet file the device makes the fused templates). Empty when off."""
        if not settings.TRAINING_EXPORT_TFLITE:
            self.lines.append("TFLite export is switched off (TRAINING_EXPORT_TFLITE).")
            return {}
        kind = pipelines.pipeline_config().embedder
        if kind not in ("facenet", FUSED_EMBEDDER):
            # the edge client makes FaceNet's or the fused templates; another embedder's gallery
            # could not be matched, so nothing is exported rather than a model that names nobody
            self.lines.append(
                f"No edge export: the served embedder is {kind}; edge devices make FaceNet's or the fused "
                f"({FUSED_EMBEDDER}) templates only."
            )
            return {}
        from recognition.engine.facenet import WEIGHTS_SHA256

        pipe = pipelines.pipeline()
        # a callable: the served TFLite embedder loads the Keras model only if a conversion is due
        cached = cached_embedder_tflite(
            lambda: pipe.embedder.model, WEIGHTS_SHA256, settings.TRAINING_CACHE_DIR, flip=pipe.embedder.flip
        )
        exported = {"facenet": _store_once(cached)}
        if kind == FUSED_EMBEDDER:  # the file the server's own "tflite" dlib runtime runs (converted once per machine)
            exported["dlib"] = _store_once(cached_dlib_tflite(settings.TRAINING_CACHE_DIR))
        return exported

    def label_map(self, faces: FaceSet, comparison, exported: dict[str, tuple[str, str]]) -> dict:
        """What an edge client needs besides the .tflite: who is who, the reference embeddings and
        the calibrated cosine threshold for nearest-neighbour matching (which needs no retraining
        on the device), and, when the softmax head is in production, its weights and threshold: one
        dense layer, applied to the embedding in numpy (see scripts/edge_client.py). People erased
        or deactivated since the run began are left out (and their head columns with them). On a
        fused site, ``"template"`` says how the device makes the 256-d templates from the two
        .tflite files (``export.fused_template``); a FaceNet site's label map has no such key."""
        from people.models import Person

        # the configuration says all the label map needs: no reason to load the models here
        pipe = pipelines.pipeline_config()
        alive = dict(Person.objects.filter(pk__in=np.unique(faces.labels).tolist(), is_active=True).values_list("id", "name"))
        keep = np.isin(faces.labels, list(alive))
        people = sorted(alive)
        data = {
            "version": self.version.number,
            "embedder": pipe.embedder_name,
            "tflite_sha256": exported.get("facenet", ("", ""))[1],
            "input": {"shape": [None, 160, 160, 3], "dtype": "float32", "pixels": "RGB 0..255, aligned crop"},
            # crops must be cut as the server cuts them, or the embeddings drift
            "alignment": {"method": pipe.align_method, "margin": pipe.align_margin, "size": 160},
            "matching": comparison.production,
            "threshold": comparison.outcomes["nearest_neighbour"].evaluation.threshold,
            "people": [{"index": i, "person_id": p, "name": alive[p]} for i, p in enumerate(people)],
            "gallery": self.edge_gallery(faces, keep, people),
        }
        if "dlib" in exported:
            data["template"] = fused_template(pipe.fusion_weight, exported["facenet"][1], exported["dlib"][1])
        if comparison.production == "softmax_head":
            head = comparison.outcomes["softmax_head"]
            columns = np.flatnonzero(np.isin(head.fitted.classes, people))
            data["head"] = {
                "threshold": head.evaluation.threshold,
                "people": np.searchsorted(people, head.fitted.classes[columns]).tolist(),  # column -> person index
                "kernel": np.round(head.fitted.kernel[:, columns], 6).tolist(),  # (embedding dim, columns)
                "bias": np.round(head.fitted.bias[columns], 6).tolist(),
            }
        return data

    def edge_gallery(self, faces: FaceSet, keep: np.ndarray, people: list[int]) -> dict:
        """The reference embeddings for edge clients, up to TRAINING_EDGE_MAX_FACES faces (as JSON a
        face is ~1.3 KB; a million would not fit a kiosk, nor this run's memory): past that the
        gallery is left empty and the label map says so (edge clients then name nobody)."""
        if int(keep.sum()) > settings.TRAINING_EDGE_MAX_FACES:
            note = (
                f"{int(keep.sum())} faces is more than TRAINING_EDGE_MAX_FACES ({settings.TRAINING_EDGE_MAX_FACES}): "
                "the edge label map carries no gallery."
            )
            self.lines.append(note)
            return {"labels": [], "embeddings": [], "omitted": note}
        return {
            "labels": np.searchsorted(people, faces.labels[keep]).tolist(),
            "embeddings": np.round(faces.embeddings[keep], 6).tolist(),
            # which photo each row is, so that a photo deleted later leaves every label map too
            # (training.redaction.redact_deleted_faces); edge clients ignore it
            "faces": faces.keys[keep].tolist(),
        }

    def finish(self, activate, note, comparison, metrics, exported, labels_bytes, confusion, roc) -> None:
        version = ModelVersion.objects.get(pk=self.version.pk)
        if version.status != ModelVersion.Status.TRAINING:
            raise RuntimeError(f"The version was marked {version.status} while it ran: {version.error}")
        version.labels.save("labels.json", ContentFile(labels_bytes), save=False)
        version.confusion_plot.save("confusion.png", ContentFile(confusion), save=False)
        version.roc_plot.save("roc.png", ContentFile(roc), save=False)
        version.tflite.name, version.tflite_sha256 = exported.get("facenet", ("", ""))
        version.dlib_tflite.name, version.dlib_tflite_sha256 = exported.get("dlib", ("", ""))
        version.labels_sha256 = sha256_bytes(labels_bytes)
        version.embedder = pipelines.pipeline_config().embedder_name
        version.recognizer = comparison.production
        # The cosine threshold is kept whichever recognizer is served: the mislabel check compares
        # faces, and a served head leaves faces of people enrolled after training to the gallery.
        version.threshold = comparison.outcomes["nearest_neighbour"].evaluation.threshold
        if comparison.production == "softmax_head":
            head = comparison.outcomes["softmax_head"]
            data = head_bytes(head.fitted)
            version.head.save("head.npz", ContentFile(data), save=False)
            version.head_sha256 = sha256_bytes(data)
            version.head_threshold = head.evaluation.threshold
        version.metrics = metrics
        version.open_set = self.open_set
        version.comparison = {"table": comparison.table(), "production": comparison.production, "reason": comparison.reason}
        version.activation_note = note
        self.report("done", 100, note)
        version.stage, version.progress, version.log, version.timings = "done", 100, "\n".join(self.lines), self.timings
        version.finished_at = timezone.now()
        version.status = ModelVersion.Status.READY
        with transaction.atomic():
            version.save()
            if activate:
                version.activate()
        self.forget_erased(version, metrics["people_names"])
        # photos deleted while the run worked from its snapshot (a deletion after this point
        # redacts the saved version itself: training.signals)
        redaction.redact_deleted_faces(ModelVersion.objects.get(pk=version.pk))

    @staticmethod
    def forget_erased(version: ModelVersion, names: dict[str, str]) -> None:
        """People erased while the run worked from its snapshot are taken out of what it saved (an
        erasure after this point redacts the saved version itself)."""
        from people.models import Person

        named = {int(k) for k in names}
        gone = named - set(Person.objects.filter(pk__in=named).values_list("id", flat=True))
        for person_id in sorted(gone):
            redaction.redact_version(ModelVersion.objects.get(pk=version.pk), person_id)


def _store_once(path: Path) -> tuple[str, str]:
    """A converted edge model stored under its sha256 (``models/embedders/<sha>.tflite``, shared by
    every version that exports the same file) -> (storage name, sha256)."""
    data = path.read_bytes()
    digest = sha256_bytes(data)
    name = f"models/embedders/{digest}.tflite"
    if not default_storage.exists(name):
        default_storage.save(name, ContentFile(data))
    return name, digest


def head_bytes(head: SoftmaxHead) -> bytes:
    """The fitted head as .npz: kernel (128, C), bias (C,), classes (C,) person ids."""
    buffer = io.BytesIO()
    np.savez(buffer, **head.arrays())
    return buffer.getvalue()


def _read_crop(name: str) -> np.ndarray | None:
    from PIL import Image

    if not name:
        return None
    try:
        with default_storage.open(name, "rb") as fh:
            image = Image.open(fh).convert("RGB")
            return np.asarray(image.resize((160, 160)) if image.size != (160, 160) else image, np.uint8)
    except (OSError, ValueError):
        return None


def _name_key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())
