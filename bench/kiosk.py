"""Kiosk capacity: how many /ws/identify/ camera streams one machine serves, through the real app.

A real daphne process on a throw-away SQLite site with the fixture people enrolled. K clients open
/ws/identify/ with a staff API token (``Authorization: Token``, an ``Origin`` from ALLOWED_HOSTS),
give consent as the protocol requires, and each sends real face frames (a fixture person's photo in
a 640x480 picture, drifting a few pixels per frame, JPEG quality 80) at 10 frames/s on a fixed
clock, as a camera does, whatever the server answers. Each ``faces`` answer names the frame it
analysed, so per stream: answered frames/s and answer time (send of frame n -> its answer; dropped
frames are never answered). Meanwhile one client GETs /healthz/ every 100 ms.

K = 1, 2, 3, ... until a step fails: a step holds when every stream is answered >= ``MIN_FPS``
frames/s (95% of the camera's 10) with answer time p95 < 200 ms, and /healthz/ p95 < 200 ms. The
capacity is the largest K that holds. Then the fairness run: K-1 normal streams beside one that
floods frames as fast as its socket takes them.

Configurations (server environment) run side by side, step by step, each on its own server:
the product (shared round-robin inference pool, TFLite embedder) against the consumer as it was
(no pool, Keras embedder), and the two changes one at a time.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np

from . import frames as F
from .api import Server, _token

CAMERA_FPS = 10.0
MIN_FPS = 9.5  # answered frames/s a stream must keep (95% of the camera's frames)
MAX_P95_MS = 200.0

CONFIGS = {
    "before (no pool, keras)": {"CHECKIN_INFERENCE_WORKERS": "0", "FACE_EMBED_RUNTIME": "keras"},
    "pool, keras": {"CHECKIN_INFERENCE_WORKERS": "2", "FACE_EMBED_RUNTIME": "keras"},
    "no pool, tflite": {"CHECKIN_INFERENCE_WORKERS": "0", "FACE_EMBED_RUNTIME": "tflite"},
    "product (pool, tflite)": {"CHECKIN_INFERENCE_WORKERS": "2", "FACE_EMBED_RUNTIME": "tflite"},
}


def _jpeg(rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    return data.tobytes()


def camera_frames(n: int = 40) -> list[list[bytes]]:
    """One list of JPEG frames per enrolled fixture photo: the photo letterboxed into 640x480 and
    drifting up to ~8 px (the stream cycles through them)."""
    photos = sorted(p for p in F.PEOPLE.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    streams = []
    for i, path in enumerate(photos):
        frame, _, _ = F.letterbox(F.read_rgb(path), np.random.default_rng(i))
        jpegs = []
        for k in range(n):
            dx, dy = 8 * np.sin(2 * np.pi * k / n), 4 * np.cos(2 * np.pi * k / n)
            moved = cv2.warpAffine(frame, np.float32([[1, 0, dx], [0, 1, dy]]), (frame.shape[1], frame.shape[0]))
            jpegs.append(_jpeg(moved))
        streams.append(jpegs)
    return streams


async def _stream(
    url: str, token: str, origin: str, frames: list[bytes], seconds: float, flood: bool = False, fps: float = CAMERA_FPS
) -> dict:
    """One camera: ``fps`` frames/s on a fixed clock, or with ``flood`` as fast as the socket takes them."""
    import websockets

    sent: dict[int, float] = {}
    answers: list[float] = []
    dropped_said = 0
    errors: dict[str, int] = {}
    server_ms: list[float] = []
    close_code, close_at = [None], [None]
    async with websockets.connect(
        url, additional_headers={"Authorization": f"Token {token}", "Origin": origin}, max_size=None
    ) as ws:
        ready = json.loads(await ws.recv())
        assert ready["type"] == "ready", ready
        await ws.send(json.dumps({"type": "consent", "notice_version": ready["notice_version"], "age_confirmed": True}))
        recorded = json.loads(await ws.recv())
        assert recorded["type"] == "consent_recorded", recorded
        started = time.perf_counter()
        done = asyncio.Event()

        async def send():
            k = 0
            while time.perf_counter() - started < seconds:
                if not flood:
                    next_at = started + k / fps
                    await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                else:
                    await asyncio.sleep(0)  # let the receiver run between sends
                k += 1
                sent[k] = time.perf_counter()
                try:
                    await ws.send(frames[k % len(frames)])
                except websockets.ConnectionClosed as closed:
                    close_code[0] = closed.rcvd.code if closed.rcvd else None
                    close_at[0] = time.perf_counter() - started
                    break
            done.set()

        async def receive():
            nonlocal dropped_said
            while True:
                try:
                    message = json.loads(await ws.recv())
                except websockets.ConnectionClosed:
                    return
                if message["type"] == "faces":
                    server_ms.append(message["server_ms"])
                    # the server numbers the frames it accepted; a flood's rate-limited ones are not
                    if not flood and message["frame"] in sent:
                        answers.append((time.perf_counter() - sent[message["frame"]]) * 1000)
                    elif flood:
                        answers.append(0.0)
                    dropped_said += message["dropped"]
                elif message["type"] == "error":
                    errors[message["code"]] = errors.get(message["code"], 0) + 1

        receiver = asyncio.create_task(receive())
        await send()
        await asyncio.sleep(0.5)  # the last frame's answer
        receiver.cancel()
        elapsed = time.perf_counter() - started
    times = answers if not flood else []
    return {
        "flood": flood,
        "sent": len(sent),
        "answered": len(answers),
        "answered_fps": len(answers) / min(elapsed, seconds),
        "p50_ms": float(np.percentile(times, 50)) if times else None,
        "p95_ms": float(np.percentile(times, 95)) if times else None,
        "dropped": dropped_said,
        "errors": errors,
        "server_ms_p50": float(np.percentile(server_ms, 50)) if server_ms else None,
        "closed": close_code[0],
        "closed_after_s": close_at[0],
    }


async def _healthz(base: str, seconds: float) -> list[float]:
    loop = asyncio.get_running_loop()
    times = []
    started = time.perf_counter()

    def one() -> float:
        t = time.perf_counter()
        urllib.request.urlopen(base + "/healthz/", timeout=30).read()
        return (time.perf_counter() - t) * 1000

    while time.perf_counter() - started < seconds:
        times.append(await loop.run_in_executor(None, one))
        await asyncio.sleep(0.1)
    return times


async def _step(
    port: int, token: str, frames: list[list[bytes]], normal: int, flooders: int, seconds: float, flood_fps: float | None = None
) -> dict:
    """``normal`` cameras at 10 frames/s and ``flooders`` sending as fast as they can (or at ``flood_fps``)."""
    base = f"http://127.0.0.1:{port}"
    url = f"ws://127.0.0.1:{port}/ws/identify/"
    tasks = [_stream(url, token, base, frames[i % len(frames)], seconds) for i in range(normal)]
    tasks += [
        _stream(url, token, base, frames[-1 - i % len(frames)], seconds, flood=flood_fps is None, fps=flood_fps or CAMERA_FPS)
        for i in range(flooders)
    ]
    *streams, health = await asyncio.gather(*tasks, _healthz(base, seconds))
    normal_streams = streams[:normal]
    result = {
        "streams": streams,
        "min_fps": min(s["answered_fps"] for s in normal_streams) if normal_streams else None,
        "worst_p50_ms": max(s["p50_ms"] or 1e9 for s in normal_streams) if normal_streams else None,
        "worst_p95_ms": max(s["p95_ms"] or 1e9 for s in normal_streams) if normal_streams else None,
        "healthz_p95_ms": float(np.percentile(health, 95)),
        "healthz_p50_ms": float(np.percentile(health, 50)),
        "flood_fps": [s["answered_fps"] for s in streams[normal:]],
        "flood_closed": [s["closed"] for s in streams[normal:]],
        "server_ms_p50": float(np.median([s["server_ms_p50"] for s in normal_streams if s["server_ms_p50"] is not None] or [0])),
    }
    result["holds"] = bool(
        normal_streams
        and result["min_fps"] >= MIN_FPS
        and result["worst_p95_ms"] < MAX_P95_MS
        and result["healthz_p95_ms"] < MAX_P95_MS
    )
    return result


def _load() -> str:
    return "/".join(f"{v:.1f}" for v in __import__("os").getloadavg())


def run(out, configs: list[str] | None = None, seconds: float = 15.0, max_streams: int = 8, min_steps: int = 3) -> dict:
    names = configs or list(CONFIGS)
    frames = camera_frames()
    out(
        f"\n## Kiosk capacity: /ws/identify/ streams at {CAMERA_FPS:g} frames/s through daphne "
        f"({seconds:g} s per step; holds = every stream >= {MIN_FPS} answered frames/s, answer p95 < "
        f"{MAX_P95_MS:g} ms, /healthz/ p95 < {MAX_P95_MS:g} ms)\n"
    )
    results: dict = {name: {"steps": {}} for name in names}
    with tempfile.TemporaryDirectory(prefix="facesite-kiosk-bench-") as tmp:
        servers = {}
        try:
            first = None
            for i, name in enumerate(names):
                workdir = Path(tmp) / f"site{i}"
                workdir.mkdir()
                server = Server("mtcnn-graph", workdir)
                server.env.update(CONFIGS[name])
                server.env.update(
                    CHECKIN_MAX_SOCKETS_PER_KEY="0",  # one token opens every stream of the run
                    CHECKIN_MAX_SOCKETS="0",
                    VISITORS_ENABLED="0",
                    TRAINING_RETRAIN_ON_ENROLLMENT="0",
                    LOG_LEVEL="WARNING",
                )
                server.env.pop("OMP_NUM_THREADS", None)
                if first is None:
                    server.manage("migrate", "--noinput")
                    server.manage("import_faces", str(F.PEOPLE), "--legal-basis", "explicit_consent")
                    first = workdir
                else:  # the same enrolled site, copied
                    import shutil

                    shutil.copy(first / "bench.sqlite3", workdir / "bench.sqlite3")
                    shutil.copytree(first / "media", workdir / "media")
                token = _token(server)
                started = time.perf_counter()
                server.start(timeout=600)
                out(f"- {name}: server ready in {time.perf_counter() - started:.0f} s ({CONFIGS[name]})")
                servers[name] = (server, token)
            for server, token in servers.values():  # warm-up: each server's first frames
                asyncio.run(_step(server.port, token, frames, 1, 0, 3))
            out(
                "\n| streams | configuration | worst stream answered frames/s | worst answer p50 / p95 | server ms/frame p50 | "
                "/healthz/ p50 / p95 | holds | load |"
            )
            out("|---|---|---|---|---|---|---|---|")
            live = list(names)
            for k in range(1, max_streams + 1):
                for name in list(live):
                    server, token = servers[name]
                    r = asyncio.run(_step(server.port, token, frames, k, 0, seconds))
                    results[name]["steps"][k] = r
                    out(
                        f"| {k} | {name} | {r['min_fps']:.1f} | {r['worst_p50_ms']:.0f} / {r['worst_p95_ms']:.0f} ms | "
                        f"{r['server_ms_p50']:.0f} | {r['healthz_p50_ms']:.0f} / {r['healthz_p95_ms']:.0f} ms | {'yes' if r['holds'] else 'no'} | {_load()} |"
                    )
                    if r["holds"] and results[name].get("capacity", 0) == k - 1:
                        results[name]["capacity"] = k  # the largest K up to which every step held
                    if not r["holds"] and k >= min_steps:
                        live.remove(name)  # capacity found (the first steps always run, to show the curve)
                if not live:
                    break
            out("\n| configuration | capacity (streams at >= 9.5 answered frames/s, p95 < 200 ms) |\n|---|---|")
            for name in names:
                out(f"| {name} | {results[name].get('capacity', 0)} |")

            # fairness: K-1 normal streams beside one flooding, K = the product's capacity (at least 2)
            k = max(2, max(results[n].get("capacity", 0) for n in names))
            out(
                f"\n### Fairness: {k - 1} normal stream(s) at 10 frames/s alone, beside one at the rate limit, "
                "beside one flooding as fast as its socket takes frames\n"
            )
            out(
                "| configuration | normal streams' worst answered frames/s | worst answer p50 / p95 | flooder answered frames/s | "
                "/healthz/ p50 / p95 | holds | load |\n|---|---|---|---|---|---|---|"
            )
            for name, (server, token) in servers.items():
                alone = asyncio.run(_step(server.port, token, frames, k - 1, 0, seconds))
                capped = asyncio.run(_step(server.port, token, frames, k - 1, 1, seconds, flood_fps=20.0))
                flooded = asyncio.run(_step(server.port, token, frames, k - 1, 1, seconds))
                results[name]["fairness"] = {"without_flood": alone, "at_rate_limit": capped, "with_flood": flooded}
                for label, r in (
                    ("alone", alone),
                    ("+ one at the rate limit (20/s)", capped),
                    ("+ one flooding", flooded),
                ):
                    flood = ", ".join(f"{f:.1f}" for f in r["flood_fps"]) or "-"
                    if any(r["flood_closed"]):
                        flood += f" (closed {r['flood_closed'][0]})"
                    out(
                        f"| {name}, {label} | {r['min_fps']:.1f} | {r['worst_p50_ms']:.0f} / {r['worst_p95_ms']:.0f} ms | {flood} | "
                        f"{r['healthz_p50_ms']:.0f} / {r['healthz_p95_ms']:.0f} ms | {'yes' if r['holds'] else 'no'} | {_load()} |"
                    )
        finally:
            for server, _ in servers.values():
                server.stop()
    return results


def run_runtime(lfw_dir: Path, out, pairs_per_fold: int | None = 100, n_timed: int = 32) -> dict:
    """The served embedder's two runtimes side by side: per-face time (one face per call, taking
    turns), agreement (cosine of the two embeddings of each LFW face) and LFW 10-fold accuracy of
    each on the same detected and aligned faces (``pairs_per_fold`` same + different pairs per
    fold; None = all 6,000)."""
    import resource

    from django.conf import settings

    from recognition.engine.alignment import align_face
    from recognition.engine.embedding import FaceEmbedder, combine_flipped
    from recognition.engine.embedding_lite import LiteFaceEmbedder
    from recognition.engine.lfw import read_pairs, ten_fold_accuracy
    from recognition.engine.lfw_run import lfw_face
    from recognition.pipelines import pipeline

    from .timing import interleaved, table_header

    keras = FaceEmbedder(flip=False)
    lite = LiteFaceEmbedder(settings.TRAINING_CACHE_DIR)
    crops = F.centre_crops(lfw_dir, n_timed)
    cpu_ms = {"keras": [], "tflite": []}

    def timed(label, embedder):
        # CPU time of the whole process (every thread): what a saturated machine has to give
        before = resource.getrusage(resource.RUSAGE_SELF)
        for c in crops:
            embedder.embed(c[None])
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu_ms[label].append((after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1000 / n_timed)

    cmp = interleaved(
        f"{n_timed} LFW faces, one per call (wall)",
        lambda _: timed("keras", keras),
        lambda _: timed("tflite", lite),
        [None] * 6,
    )
    out("\n### The embedder's runtime (FACE_EMBED_RUNTIME)\n")
    out(table_header("keras (TensorFlow graph)", f"tflite (interpreter, {lite.threads} threads)"))
    out(cmp.row())
    cpu = (float(np.median(cpu_ms["keras"])), float(np.median(cpu_ms["tflite"])))
    per_face = (cmp.baseline_median / n_timed, cmp.product_median / n_timed)
    out(
        f"- per face, wall: {per_face[0]:.1f} ms vs {per_face[1]:.1f} ms ({cmp.speedup:.2f}x); CPU time: {cpu[0]:.1f} ms vs "
        f"{cpu[1]:.1f} ms ({cpu[0] / cpu[1]:.2f}x); load {_load()}"
    )

    pairs = read_pairs(lfw_dir, per_fold=pairs_per_fold)
    files = sorted({p.left for p in pairs} | {p.right for p in pairs})
    pipe = pipeline()
    cfg = pipe.config
    aligned = []
    for name in files:
        rgb, face, _ = lfw_face(pipe, lfw_dir, name)
        aligned.append(align_face(rgb, face, method=cfg.align_method, margin=cfg.align_margin))
    aligned = np.stack(aligned)
    embeddings = {}
    for label, embedder in (("keras", keras), ("tflite", lite)):
        plain = np.concatenate([embedder.embed(aligned[i : i + 32]) for i in range(0, len(aligned), 32)])
        mirrored = np.concatenate([embedder.embed(aligned[i : i + 32, :, ::-1]) for i in range(0, len(aligned), 32)])
        embeddings[label] = {"no flip": plain, "flip": combine_flipped(plain, mirrored)}
    cosines = np.sum(embeddings["keras"]["no flip"] * embeddings["tflite"]["no flip"], axis=1)
    cosines_flip = np.sum(embeddings["keras"]["flip"] * embeddings["tflite"]["flip"], axis=1)
    index = {name: i for i, name in enumerate(files)}
    left = np.array([index[p.left] for p in pairs])
    right = np.array([index[p.right] for p in pairs])
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])
    scope = (
        f"{len(pairs):,} pairs ({pairs_per_fold} same + {pairs_per_fold} different per fold)"
        if pairs_per_fold
        else "all 6,000 pairs"
    )
    out(
        f"\n- agreement on {len(files):,} LFW faces (detected, aligned): cosine keras vs tflite min {cosines.min():.6f}, "
        f"median {np.median(cosines):.6f}; with flip min {cosines_flip.min():.6f}"
    )
    out(f"\n| LFW 10-fold, {scope} | keras | tflite |\n|---|---|---|")
    out(f"(detection and alignment once, both runtimes embed the same crops; load {_load()})")
    results = {
        "per_face_ms": per_face,
        "speedup": cmp.speedup,
        "min_cosine": float(cosines.min()),
        "min_cosine_flip": float(cosines_flip.min()),
    }
    for variant in ("no flip", "flip"):
        row = []
        for label in ("keras", "tflite"):
            e = embeddings[label][variant]
            similarities = np.sum(e[left] * e[right], axis=1)
            result = ten_fold_accuracy(similarities, same, folds).as_dict()
            row.append(result)
            results[f"{label} {variant}"] = result
        cells = " | ".join(f"{100 * r['accuracy_mean']:.2f}% +- {100 * r['accuracy_std']:.2f}%" for r in row)
        out(f"| {variant} | {cells} |")
    return results
