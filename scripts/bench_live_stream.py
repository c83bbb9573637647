"""Per-frame server time and frames/s of ONE live check-in stream, through the real /ws/identify/ consumer.

    .venv/bin/python scripts/bench_live_stream.py [--frames 30] [--rounds 3]

Self-contained: a throwaway SQLite database in a temporary folder, the ten fixture people enrolled
into it, then the consumer driven with channels' WebsocketCommunicator (no network; what is timed is
the server: JPEG decode, detection, tracking, embedding, matching, ORM, JSON). Two settings take
turns, connection by connection, so load from other processes hits both alike:

- "every frame": each frame searched whole (min face 20 px, the recognize API's detector) and every
  face embedded (CHECKIN_FULL_FRAME_EVERY=1, CHECKIN_MIN_FACE_PX=20, CHECKIN_REEMBED_EVERY=1);
- "tracked (product)": the defaults: the whole frame (min face 40 px) searched every 5th frame and
  only around the followed faces in between, each face re-embedded every 3rd frame.

Modes: one frame in flight (the browser's adaptive rate: the next frame is sent when the answer
arrives), and a camera pushing 15 frames/s regardless (backpressure: stale frames dropped).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FACES = ROOT / "tests" / "fixtures" / "faces"


def camera_frames(path: Path, count: int) -> list[bytes]:
    """A photo letterboxed into 640x480 and drifting a few pixels per frame, as JPEG frames."""
    from PIL import Image

    image = Image.open(path).convert("RGB")
    image.thumbnail((600, 440))
    frames = []
    for i in range(count):
        canvas = Image.new("RGB", (640, 480))
        dx, dy = (i % 8) * 2, (i % 5) * 2  # a person never holds perfectly still
        canvas.paste(image, ((640 - image.width) // 2 - 8 + dx, (480 - image.height) // 2 - 5 + dy))
        buffer = io.BytesIO()
        canvas.save(buffer, format="JPEG", quality=80)
        frames.append(buffer.getvalue())
    return frames


async def consented_connection(application, user):
    """A /ws/identify/ connection as the page opens it: connected, consent given."""
    from channels.testing import WebsocketCommunicator

    communicator = WebsocketCommunicator(application, "/ws/identify/")
    communicator.scope["user"] = user
    communicator.scope["session"] = {}
    await communicator.connect()
    ready = json.loads(await communicator.receive_from(timeout=60))
    await communicator.send_json_to({"type": "consent", "notice_version": ready["notice_version"], "age_confirmed": True})
    await communicator.receive_from(timeout=60)
    return communicator


async def one_in_flight(application, user, frames: list[bytes]) -> dict:
    communicator = await consented_connection(application, user)
    round_trips, server, embedded, faces = [], [], 0, 0
    for frame in frames:
        started = time.perf_counter()
        await communicator.send_to(bytes_data=frame)
        while True:
            message = json.loads(await communicator.receive_from(timeout=300))
            if message["type"] == "faces":
                break
        round_trips.append((time.perf_counter() - started) * 1000.0)
        server.append(message["server_ms"])
        embedded += message["embedded"]
        faces += len(message["faces"])
    await communicator.disconnect()
    return {"round_trip_ms": round_trips, "server_ms": server, "embedded": embedded, "faces": faces}


async def camera_push(application, user, frames: list[bytes], fps: float) -> dict:
    """Send at the camera's rate whatever happens; count what was answered and what was dropped."""
    communicator = await consented_connection(application, user)
    answered, dropped, lag = [], 0, []
    sent_at: dict[int, float] = {}
    started = time.perf_counter()

    async def reader():
        nonlocal dropped
        while True:
            message = json.loads(await communicator.receive_from(timeout=300))
            if message["type"] == "faces":
                answered.append(message["frame"])
                dropped += message["dropped"]
                lag.append((time.perf_counter() - sent_at[message["frame"]]) * 1000.0)
                if message["frame"] == len(frames):
                    return

    task = asyncio.create_task(reader())
    for i, frame in enumerate(frames, start=1):
        sent_at[i] = time.perf_counter()
        await communicator.send_to(bytes_data=frame)
        await asyncio.sleep(max(0.0, started + i / fps - time.perf_counter()))
    await task
    elapsed = time.perf_counter() - started
    await communicator.disconnect()
    return {"answered": len(answered), "dropped": dropped, "seconds": elapsed, "lag_ms": lag}


def median(values):
    import numpy as np

    return float(np.median(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=30, help="frames per connection")
    parser.add_argument("--rounds", type=int, default=3, help="connections per setting and scene")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-live-"))
    os.environ.pop("DATABASE_URL", None)
    os.environ.pop("REDIS_URL", None)
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "facesite.settings",
            "SQLITE_PATH": str(workdir / "db.sqlite3"),
            "MEDIA_ROOT": str(workdir / "media"),
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "CHECKIN_MAX_FPS": "1000",  # the rate limit is not what is measured
        }
    )
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from asgiref.sync import async_to_sync
    from channels.routing import URLRouter
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from checkin.routing import websocket_urlpatterns
    from people.models import FaceImage

    call_command("migrate", verbosity=0)
    call_command("import_faces", str(FACES / "people"), legal_basis="explicit_consent", verbosity=0)
    for face in FaceImage.objects.filter(status=FaceImage.Status.REVIEW):
        from people import services

        services.approve(face)
    user = get_user_model().objects.create_user("bench")
    application = URLRouter(websocket_urlpatterns)
    knobs = ("CHECKIN_REEMBED_EVERY", "CHECKIN_FULL_FRAME_EVERY", "CHECKIN_MIN_FACE_PX")
    product = {key: getattr(settings, key) for key in knobs}
    baseline = dict(zip(knobs, (1, 1, 20)))
    print(f"# workdir {workdir}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}")

    scenes = {
        "1 face (obama1.jpg)": FACES / "probes" / "obama1.jpg",
        "6 faces (multiface.jpg)": FACES / "probes" / "multiface.jpg",
    }
    async_to_sync(one_in_flight)(application, user, camera_frames(scenes["1 face (obama1.jpg)"], 3))  # warm-up: load models

    print("\n## One frame in flight (the page's adaptive rate)\n")
    print("| scene | setting | server ms/frame (median / mean) | round trip ms (mean) | frames/s | embeddings per face-frame |")
    print("|---|---|---|---|---|---|")
    for scene, path in scenes.items():
        frames = camera_frames(path, args.frames)
        results = {"every frame": [], "tracked (product)": []}
        for round_number in range(args.rounds):
            order = list(results) if round_number % 2 == 0 else list(results)[::-1]
            for name in order:
                for key, value in (baseline if name == "every frame" else product).items():
                    setattr(settings, key, value)
                results[name].append(async_to_sync(one_in_flight)(application, user, frames))
        for name, runs in results.items():
            server = [ms for run in runs for ms in run["server_ms"]]
            trips = [ms for run in runs for ms in run["round_trip_ms"]]
            ratio = sum(r["embedded"] for r in runs) / max(1, sum(r["faces"] for r in runs))
            mean_trip = sum(trips) / len(trips)  # frames with and without an embedding alternate: the mean sets the rate
            print(
                f"| {scene} | {name} | {median(server):.0f} / {sum(server) / len(server):.0f} | {mean_trip:.0f} | "
                f"{1000 / mean_trip:.1f} | {ratio:.2f} |"
            )
    for key, value in product.items():
        setattr(settings, key, value)

    print("\n## A camera pushing 15 frames/s regardless (backpressure)\n")
    print("| scene | frames sent | answered | dropped as stale | answered frames/s | answer lag ms (median) |")
    print("|---|---|---|---|---|---|")
    frames = camera_frames(scenes["1 face (obama1.jpg)"], args.frames * 2)
    result = async_to_sync(camera_push)(application, user, frames, 15.0)
    print(
        f"| 1 face | {len(frames)} | {result['answered']} | {result['dropped']} | "
        f"{result['answered'] / result['seconds']:.1f} | {median(result['lag_ms']):.0f} |"
    )


if __name__ == "__main__":
    main()
