#!/usr/bin/env python
"""Offline edge kiosk: sync the server's TFLite model, recognize from a camera or video, check in.

    python -m edge sync   --server https://faces.example --key $KIOSK_KEY
    python -m edge run    --camera 0 --consent            # window with boxes and names
    python -m edge run    --video clip.mp4 --headless     # JSON lines on stdout
    python -m edge upload                                  # send queued check-ins now
    python -m edge status
    python -m edge wipe                                    # erase the device's copy by hand

Frames are analysed in memory and never written anywhere. Check-ins follow the server's rule (the
same identity over CHECKIN_STABLE_FRAMES tracked frames, backed by two embeddings; one per person
per repeat window), are queued in the state directory and uploaded when the server answers.
When the server refuses the device's key for good (kiosk deactivated, key revoked), the kiosk stops
and erases its copy (``wipe``); after ``--max-offline-hours`` without a sync it stops recognising.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python edge/kiosk.py`: the engine code is imported from the repository
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from edge.outbox import Outbox  # noqa: E402
from edge.recognizer import EdgeRecognizer  # noqa: E402
from edge.sync import Offline, Refused, Server, State, SyncError, sync  # noqa: E402

# Exit status of a device that erased its copy because the server refused its key, and of one that
# stopped recognising because its copy is older than --max-offline-hours.
EXIT_WIPED = 3
EXIT_STALE = 4
MAX_OFFLINE_HOURS = 72.0


def emit(event: dict) -> None:
    print(json.dumps(event), flush=True)


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def wipe(state: State, outbox: Outbox, reason: str) -> dict:
    """Erase the device's copy: model pairs and label maps, gallery, names, manifest, queued
    check-ins and the repeat window's rows. Returns the event saying so."""
    outbox.erase()
    state.wipe(reason)
    return {
        "type": "wiped",
        "reason": reason,
        "message": "This device's copy of the gallery, model and check-ins was erased; it no longer recognises anyone.",
    }


def prune_recent(state: State, outbox: Outbox) -> None:
    """The repeat window's rows of the window only, and of people the device still knows only."""
    minutes = state.manifest.get("checkin", {}).get("repeat_window_minutes", 30)
    outbox.prune(timedelta(minutes=minutes), state.known_people())


def too_old(state: State, max_offline_hours: float) -> str | None:
    """Why the device's copy is too old to recognise with (None if it is not, or there is no limit)."""
    if max_offline_hours <= 0:
        return None
    age = state.offline_for()
    if age is None:
        return "no successful sync recorded on this device"
    if age > max_offline_hours * 3600:
        return f"last successful sync {age / 3600:.1f} hours ago, more than --max-offline-hours {max_offline_hours:g}"
    return None


# ---- consent ---------------------------------------------------------------------------------------


def ensure_consent(state: State, given_by_flag: bool, interactive: bool) -> dict:
    """The consent in force for the notice version last fetched from the server; asks or records it.

    It says how it was obtained, and the server stores exactly that: ``method`` "operator_flag"
    (``--consent``: the operator says the notice was shown by other means; no age was asked, so
    ``age_confirmed`` is False) or "interactive" (the notice shown here and the operator answered
    yes to a question that includes the minimum age). A consent recorded before the device said
    how (no ``method``) is asked again. Raises SystemExit when there is none: the camera is not
    opened without it."""
    notice = state.manifest.get("consent")
    if not notice:
        raise SystemExit("No consent notice cached: run `python -m edge sync` while the server is reachable first.")
    consent = state.read().get("consent") or {}
    if consent.get("notice_version") == notice["notice_version"] and consent.get("method"):
        return consent
    if not given_by_flag:
        if not interactive:
            raise SystemExit(
                f"Consent to notice {notice['notice_version']} has not been given on this device: pass --consent "
                "(after the people using the kiosk have been shown the notice) or run interactively."
            )
        print(notice["text"], "\n", file=sys.stderr)
        answer = input(
            f"Do the people using this kiosk agree to this processing, and are they at least {notice['min_age']}? [y/N] "
        )
        if answer.strip().lower() not in ("y", "yes"):
            raise SystemExit("Consent not given: the camera stays off.")
    consent = {
        "notice_version": notice["notice_version"],
        "given_at": now_iso(),
        "method": "operator_flag" if given_by_flag else "interactive",
        "age_confirmed": not given_by_flag,
    }
    state.update(consent=consent)
    return consent


def notice_changed(state: State, consent: dict) -> str | None:
    """The notice version the last sync brought, when it is not the one ``consent`` was given to."""
    version = (state.manifest.get("consent") or {}).get("notice_version")
    return version if version and version != consent.get("notice_version") else None


# ---- the run loop ----------------------------------------------------------------------------------


def open_source(args):
    import cv2

    source = cv2.VideoCapture(str(args.video) if args.video else int(args.camera))
    if not source.isOpened():
        raise SystemExit(f"cannot open {'video ' + str(args.video) if args.video else 'camera ' + str(args.camera)}")
    return source


def check_window_support() -> None:
    import cv2

    try:
        cv2.namedWindow("facesite kiosk")
    except cv2.error as err:
        raise SystemExit(
            "This OpenCV has no GUI (opencv-contrib-python-headless is what the server installs): "
            "run with --headless, or `pip uninstall opencv-contrib-python-headless && pip install opencv-python` "
            f"on the device. ({str(err).strip().splitlines()[-1]})"
        )


def draw(bgr, faces: list[dict]):
    import cv2

    for face in faces:
        x, y, w, h = face["box"]
        colour = (0, 200, 0) if face["person_id"] else (0, 0, 220)
        cv2.rectangle(bgr, (x, y), (x + w, y + h), colour, 2)
        label = face["name"] or "unknown"
        if face["state"] == "checked_in":
            label += " - checked in"
        cv2.putText(bgr, label, (x, max(12, y - 6)), cv2.FONT_HERSHEY_SIMPLEX, 0.6, colour, 2)
    cv2.imshow("facesite kiosk", bgr)
    return cv2.waitKey(1) & 0xFF


class Kiosk:
    def __init__(
        self, state: State, server: Server | None, outbox: Outbox, sync_every: float, max_offline_hours: float = MAX_OFFLINE_HOURS
    ):
        self.state = state
        self.server = server
        self.outbox = outbox
        self.sync_every = sync_every
        self.max_offline_hours = max_offline_hours
        self.last_sync = 0.0
        self.online: bool | None = None
        self.stopped: int | None = None  # EXIT_WIPED or EXIT_STALE once the kiosk must stop recognising
        self.recognizer = self.load()
        prune_recent(state, outbox)

    def load(self) -> EdgeRecognizer:
        if self.state.pair_dir is None:
            raise SystemExit("No model on this device yet: run `python -m edge sync` while the server is reachable.")
        rule = self.state.manifest.get("checkin", {})
        state = self.state.read()
        return EdgeRecognizer(
            self.state.pair_dir,
            self.state.gallery(),
            state.get("names", {}),
            rule,
            state.get("gallery_embedder"),
            inactive=self.state.manifest.get("inactive_people", ()),
        )

    def maybe_sync(self, force: bool = False) -> None:
        """Every ``sync_every`` seconds: upload queued check-ins, fetch a newly activated model."""
        if self.server is None or (not force and time.monotonic() - self.last_sync < self.sync_every):
            return
        self.last_sync = time.monotonic()
        try:
            for report in self.outbox.upload(self.server):
                emit(report)
            before = (self.state.version, self.state.read().get("gallery_cursor"))
            inactive = self.state.manifest.get("inactive_people")
            report = sync(self.server, self.state)
            if self.online is not True:
                emit({"type": "online"})
            self.online = True
            masked = inactive != self.state.manifest.get("inactive_people")  # someone (re)activated on the server
            if report["model_changed"] or report["gallery_changes"] or before[0] != self.state.version or masked:
                self.recognizer = self.load()
                emit({**report, "reloaded": True})
            prune_recent(self.state, self.outbox)
            for upload in self.outbox.upload(self.server):
                emit(upload)
        except Refused as err:  # deactivated or revoked: forget everything, stop
            self.recognizer = None
            self.stopped = EXIT_WIPED
            emit(wipe(self.state, self.outbox, str(err)))
            return
        except Offline as err:
            if self.online is not False:
                emit({"type": "offline", "error": str(err)})
            self.online = False
        except SyncError as err:
            emit({"type": "sync_error", "error": str(err), "version": self.state.version})
        if (reason := too_old(self.state, self.max_offline_hours)) is not None:
            self.recognizer = None
            self.stopped = EXIT_STALE
            emit({"type": "stale", "reason": reason, "message": "This device stopped recognising: sync it with the server."})

    def run(self, source, headless: bool, every: int, consent: dict, interactive: bool = False) -> int:
        """Recognize and check in until the source ends (0), or until a sync brings a notice version
        ``consent`` was not given to and it is not given again here (2): interactively the new
        notice is asked at once; otherwise (``--consent``, headless) the kiosk stops, and the next
        ``run`` asks (or needs ``--consent`` again, after the operator showed the new notice)."""
        import cv2

        rule = self.state.manifest.get("checkin", {})
        window = timedelta(minutes=rule.get("repeat_window_minutes", 30))
        index = 0
        self.maybe_sync(force=True)
        while self.stopped is None:
            if new_notice := notice_changed(self.state, consent):
                emit({"type": "consent_required", "notice_version": new_notice, "given": consent["notice_version"]})
                try:
                    consent = ensure_consent(self.state, False, interactive)
                except SystemExit as stop:
                    print(stop, file=sys.stderr)
                    emit({"type": "end", "frames": index, "pending": len(self.outbox.pending()), "version": self.state.version})
                    return 2
            ok, bgr = source.read()
            if not ok:
                break
            if index % every:
                index += 1
                continue
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            faces, ready = self.recognizer.process(rgb)
            for track in ready:
                track.checked_in = True
                if self.outbox.checked_in_recently(track.person_id, window):
                    continue
                checkin = {
                    "client_id": str(uuid.uuid4()),
                    "person_id": track.person_id,
                    "checked_in_at": now_iso(),
                    "similarity": round(float(np.mean(track.agreeing)), 6),
                    "threshold": self.recognizer.threshold,
                    "frames": min(track.streak, 32767),
                    "model_version": self.state.version,
                    "notice_version": consent["notice_version"],
                    "consent_given_at": consent["given_at"],
                    "consent_method": consent["method"],
                    "age_confirmed": consent["age_confirmed"],
                }
                self.outbox.add(checkin)
                emit({"type": "checkin", "name": self.recognizer.name(track.person_id), "queued": True, **checkin})
            faces = self.recognizer.describe(faces)
            del rgb  # frames live in memory only, for the time it takes to analyse them
            if headless:
                emit({"type": "frame", "frame": index, "version": self.state.version, "faces": faces})
            elif draw(bgr, faces) in (ord("q"), 27):
                break
            index += 1
            self.maybe_sync()
        if self.stopped is None:
            self.maybe_sync(force=True)
        emit({"type": "end", "frames": index, "pending": len(self.outbox.pending()), "version": self.state.version})
        return self.stopped or 0


# ---- command line ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    os.umask(0o077)  # state files and folders: the owner's only (sync.py sets their modes as well)
    parser = argparse.ArgumentParser(prog="python -m edge", description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default=os.environ.get("FACESITE_SERVER", "http://127.0.0.1:8000"))
    parser.add_argument("--key", default=os.environ.get("FACESITE_KIOSK_KEY"), help="kiosk API key (or FACESITE_KIOSK_KEY)")
    parser.add_argument("--state-dir", type=Path, default=Path(os.environ.get("FACESITE_EDGE_STATE", "var/edge-kiosk")))
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("sync", help="fetch the active model pair (if changed), the gallery delta and the rules")
    run = commands.add_parser("run", help="recognize and check in from a camera or a video")
    source = run.add_mutually_exclusive_group(required=True)
    source.add_argument("--video", type=Path)
    source.add_argument("--camera", type=int)
    run.add_argument("--headless", action="store_true", help="no window: JSON lines on stdout")
    run.add_argument("--consent", action="store_true", help="record consent to the cached notice without asking")
    run.add_argument("--every", type=int, default=1, help="analyse every n-th frame")
    run.add_argument("--sync-every", type=float, default=60.0, help="seconds between syncs and uploads while running")
    run.add_argument(
        "--max-offline-hours",
        type=float,
        default=float(os.environ.get("FACESITE_EDGE_MAX_OFFLINE_HOURS", MAX_OFFLINE_HOURS)),
        help="stop recognising when the last successful sync is older than this (0: no limit; "
        f"or FACESITE_EDGE_MAX_OFFLINE_HOURS; default {MAX_OFFLINE_HOURS:g})",
    )
    commands.add_parser("upload", help="upload queued check-ins now")
    commands.add_parser("status", help="print the state: version, pending check-ins, consent")
    commands.add_parser("wipe", help="erase the model, gallery, names and queued check-ins from this device")
    args = parser.parse_args(argv)

    state = State(args.state_dir)
    server = Server(args.server, args.key) if args.key else None
    outbox = Outbox(state.root / "outbox.sqlite3")
    try:
        if args.command == "status":
            emit(
                {
                    **{k: v for k, v in state.read().items() if k != "names"},
                    "pending": len(outbox.pending()),
                    "dropped": outbox.dropped_counts(),
                }
            )
            return 0
        if args.command == "wipe":
            emit(wipe(state, outbox, "wiped by hand (python -m edge wipe)"))
            return 0
        if server is None:
            parser.error("--key (or FACESITE_KIOSK_KEY) is required")
        if args.command == "sync":
            try:
                emit(sync(server, state))
            except Refused as err:
                emit(wipe(state, outbox, str(err)))
                return EXIT_WIPED
            except (Offline, SyncError) as err:
                emit({"type": "sync_error", "error": str(err), "version": state.version})
                return 1
            prune_recent(state, outbox)
            return 0
        if args.command == "upload":
            try:
                reports = outbox.upload(server)
            except Refused as err:
                emit(wipe(state, outbox, str(err)))
                return EXIT_WIPED
            for report in reports:
                emit(report)
            return 0 if all(r["status"] in (200, 201) for r in reports) else 1
        if wiped := state.read().get("wiped"):
            raise SystemExit(f"This device's copy was erased at {wiped['at']} ({wiped['reason']}): it recognises nobody.")
        interactive = sys.stdin.isatty()
        consent = ensure_consent(state, args.consent, interactive)  # before any camera is opened
        if not args.headless:
            check_window_support()
        kiosk = Kiosk(state, server, outbox, args.sync_every, args.max_offline_hours)
        return kiosk.run(open_source(args), args.headless, max(1, args.every), consent, interactive)
    finally:
        outbox.close()


if __name__ == "__main__":
    sys.exit(main())
