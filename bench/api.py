"""POST /api/v1/recognize/ on a real server (daphne on 127.0.0.1), under 1, 4 and 16 clients.

The server runs on a throw-away SQLite database with the fixture people enrolled, and per-token
throttling raised out of the way (the benchmark measures the engine, not the rate limit).
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from . import frames as F

PYTHON = sys.executable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _multipart(field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = "benchmarkboundary7d1c"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


class Server:
    """A daphne process on a temporary database; ``detector`` picks FACE_DETECTOR."""

    def __init__(self, detector: str, workdir: Path):
        self.port = _free_port()
        self.env = {
            **os.environ,
            "SQLITE_PATH": str(workdir / "bench.sqlite3"),
            "MEDIA_ROOT": str(workdir / "media"),
            "FACE_DETECTOR": detector,
            "THROTTLE_STAFF": "1000000/min",
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
        }
        self.env.pop("DATABASE_URL", None)
        self.process = None
        self.log = open(workdir / f"daphne-{detector}.log", "wb")

    def manage(self, *args: str) -> str:
        return subprocess.run(
            [PYTHON, "manage.py", *args], cwd=F.ROOT, env=self.env, check=True, capture_output=True, text=True
        ).stdout

    def start(self, timeout: float = 180) -> None:
        self.process = subprocess.Popen(
            [str(Path(PYTHON).parent / "daphne"), "-b", "127.0.0.1", "-p", str(self.port), "facesite.asgi:application"],
            cwd=F.ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz/", timeout=2)
                return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError("the server exited; see its log") from None
                time.sleep(0.5)
        raise RuntimeError("the server did not come up in time")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


def _token(server: Server) -> str:
    code = (
        "from django.contrib.auth import get_user_model; from rest_framework.authtoken.models import Token; "
        "u, _ = get_user_model().objects.get_or_create(username='bench', defaults={'is_staff': True, 'is_superuser': True}); "
        "print(Token.objects.get_or_create(user=u)[0].key)"
    )
    return server.manage("shell", "-c", code).strip().splitlines()[-1]


def _load(url: str, token: str, body: bytes, content_type: str, clients: int, requests: int, time_limit: float) -> dict:
    def one(_):
        req = urllib.request.Request(url, data=body, method="POST")
        req.add_header("Authorization", f"Token {token}")
        req.add_header("Content-Type", content_type)
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                payload = json.loads(resp.read())
                ok = resp.status == 200 and bool(payload["faces"])
        except Exception:  # an HTTP error or timeout is counted, not raised
            ok = False
        return ok, (time.perf_counter() - started) * 1000

    started = time.perf_counter()
    results = []
    with ThreadPoolExecutor(clients) as pool:
        futures = []
        for _ in range(requests):
            futures.append(pool.submit(one, None))
        for future in futures:
            remaining = time_limit - (time.perf_counter() - started)
            if remaining <= 0:
                break
            results.append(future.result(timeout=max(remaining, 1)))
        for future in futures:
            future.cancel()
    wall = time.perf_counter() - started
    latencies = [ms for _, ms in results]
    return {
        "clients": clients,
        "requests": len(results),
        "errors": sum(not ok for ok, _ in results) + (requests - len(results)),
        "rps": len(results) / wall,
        "p50_ms": float(np.percentile(latencies, 50)),
        "p95_ms": float(np.percentile(latencies, 95)),
    }


def frame_jpeg() -> bytes:
    """A 640x480 JPEG of an enrolled person (one face), as a camera would send it."""
    frame, _, _ = F.letterbox(F.read_rgb(F.PROBES / "obama1.jpg"), np.random.default_rng(0))
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def run(out, loads=((1, 20), (4, 40), (16, 64)), baseline: bool = True, time_limit: float = 120) -> dict:
    body, content_type = _multipart("image", "frame.jpg", frame_jpeg())
    results = {}
    out("\n## POST /api/v1/recognize/ on 127.0.0.1 (one 640x480 JPEG, one enrolled face)\n")
    out(
        "| server detector | clients | requests | errors | requests/s | p50 latency | p95 latency |\n|---|---|---|---|---|---|---|"
    )
    for detector in ("mtcnn-graph", "mtcnn") if baseline else ("mtcnn-graph",):
        with tempfile.TemporaryDirectory(prefix="facesite-bench-") as tmp:
            server = Server(detector, Path(tmp))
            server.manage("migrate", "--noinput")
            server.manage("import_faces", str(F.PEOPLE), "--legal-basis", "explicit_consent")
            token = _token(server)
            server.start()
            try:
                url = f"http://127.0.0.1:{server.port}/api/v1/recognize/"
                _load(url, token, body, content_type, 1, 2, time_limit)  # warm-up
                for clients, count in loads:
                    r = _load(url, token, body, content_type, clients, count, time_limit)
                    results[f"{detector} x{clients}"] = r
                    out(
                        f"| {detector} | {clients} | {r['requests']} | {r['errors']} | {r['rps']:.2f} | "
                        f"{r['p50_ms']:.0f} ms | {r['p95_ms']:.0f} ms |"
                    )
            finally:
                server.stop()
    return results
