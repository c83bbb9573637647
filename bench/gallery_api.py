"""The gallery through the real app: POST /api/v1/recognize/ on a real server at ~100, 100k and 1M
enrolled faces, side by side; cold start from the snapshot; memory (RSS, PSS) of one and two workers.

Each size is its own throw-away site (SQLite, or PostgreSQL with ``--database-url``): the fixture
people enrolled from their photos (so the probe has its match), then synthetic faces fitted to real
LFW embeddings imported with ``manage.py import_embeddings``, then the gallery snapshot written as the
background task writes it. Then a daphne server starts (it maps the snapshot while it warms up),
answers one request (the first after start), 20 more (p50), and a second server on the same
gallery shows what another worker on the machine costs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from . import frames as F
from .api import PYTHON, Server, _multipart, _token, frame_jpeg
from .synthetic import EmbeddingModel


def memory_mb(pid: int) -> dict:
    """Rss, Pss, shared and private memory of a process (/proc/PID/smaps_rollup), in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0]) / 1024
    return {
        "rss": fields["Rss"],
        "pss": fields["Pss"],
        "shared": fields["Shared_Clean"] + fields["Shared_Dirty"],
        "private": fields["Private_Clean"] + fields["Private_Dirty"],
    }


class GallerySite(Server):
    """A bench site whose gallery snapshot lives in its own private directory."""

    def __init__(self, workdir: Path, database_url: str | None):
        super().__init__("mtcnn-graph", workdir)
        self.env["GALLERY_SNAPSHOT_DIR"] = str(workdir / "gallery")
        self.env["TRAINING_RETRAIN_ON_ENROLLMENT"] = "0"  # no retrain task waits behind the import
        self.env["OMP_NUM_THREADS"] = "1"
        self.env["TRAINING_EXPORT_TFLITE"] = "0"  # the TFLite conversion costs the same at every size
        if database_url:
            self.env["DATABASE_URL"] = database_url
        self.workdir = workdir

    def start_process(self, name: str) -> tuple[subprocess.Popen, int, float]:
        """Start one more daphne on this site; (process, port, seconds until /healthz/ answered)."""
        from .api import _free_port

        port = _free_port()
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
        started = time.perf_counter()
        proc = subprocess.Popen(
            [str(Path(PYTHON).parent / "daphne"), "-b", "127.0.0.1", "-p", str(port), "facesite.asgi:application"],
            cwd=F.ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz/", timeout=2)
                return proc, port, time.perf_counter() - started
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"the server exited; see {self.workdir / name}.log") from None
                if time.perf_counter() - started > 600:
                    raise RuntimeError("the server did not come up in 10 minutes")
                time.sleep(0.2)


def _recognize(port: int, token: str, body: bytes, content_type: str) -> tuple[float, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/recognize/", data=body, method="POST")
    req.add_header("Authorization", f"Token {token}")
    req.add_header("Content-Type", content_type)
    started = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as resp:
        payload = json.loads(resp.read())
    return (time.perf_counter() - started) * 1000, payload


def synthetic_file(path: Path, model: EmbeddingModel, count: int, embedder: str, per_person: int = 5, seed: int = 0) -> None:
    n_people = max(1, count // per_person)
    people = np.arange(count) % n_people
    embeddings = model.faces(model.centres(n_people, seed), people, seed + 1)
    names = np.array([f"Synthetic {p:07d}" for p in people])
    np.savez(
        path, names=names, embeddings=embeddings, embedder=np.array(embedder), external_ids=np.array([f"syn-{p}" for p in people])
    )


def run(
    lfw_dir: Path,
    sizes: list[int],
    out,
    requests: int = 20,
    database_url: str | None = None,
    varied: int = 200,
    batch_people: int = 15,
    retrain_timeout: float = 3600,
) -> dict:
    from django.conf import settings

    from recognition.pipelines import pipeline

    from .gallery import real_embeddings

    # the real LFW embeddings the synthetic ones are fitted to (public faces), cached between runs
    cached = Path(settings.TRAINING_CACHE_DIR) / "bench-gallery-api-lfw-embeddings.npz"
    if cached.exists():
        with np.load(cached) as arrays:
            real, labels = arrays["real"], arrays["labels"]
    else:
        real, labels = real_embeddings(lfw_dir)
        cached.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cached, real=real, labels=labels)
    model = EmbeddingModel.fit(real, labels)
    embedder = pipeline().embedder_name
    body, content_type = _multipart("image", "frame.jpg", frame_jpeg())
    backend = "PostgreSQL" if database_url else "SQLite"
    out(f"\n## The gallery through the real app ({backend}): POST /api/v1/recognize/, one 640x480 JPEG, one enrolled face\n")
    results = {}
    with tempfile.TemporaryDirectory(prefix="facesite-gallery-bench-base-") as base_dir:
        base = Path(base_dir)
        if not database_url:  # the fixture people enrolled once; each size starts from a copy
            seed = GallerySite(base, None)
            seed.manage("migrate", "--noinput")
            seed.manage("import_faces", str(F.PEOPLE), "--legal-basis", "explicit_consent")
        for size in sizes:
            results[size] = _one_size(
                size,
                base,
                model,
                embedder,
                body,
                content_type,
                requests,
                database_url,
                out,
                (lfw_dir, varied, batch_people, retrain_timeout),
            )
    _table(results, out)
    _enrollment_table(results, out)
    return results


def _one_size(size, base, model, embedder, body, content_type, requests, database_url, out, extra) -> dict:
    from . import gallery_enrollment as E

    lfw_dir, varied, batch_people, retrain_timeout = extra
    with tempfile.TemporaryDirectory(prefix="facesite-gallery-bench-") as tmp:
        site = GallerySite(Path(tmp), database_url)
        if site.env.get("REDIS_URL"):  # the bench's own Redis database: no task left from the last size
            import redis

            redis.Redis.from_url(site.env["REDIS_URL"]).flushdb()
        if database_url:
            _reset_postgres(database_url)
            site.manage("migrate", "--noinput")
            site.manage("import_faces", str(F.PEOPLE), "--legal-basis", "explicit_consent")
        else:
            shutil.copy(base / "bench.sqlite3", Path(tmp) / "bench.sqlite3")
            shutil.copytree(base / "media", Path(tmp) / "media")
        token = _token(site)
        enrolled = int(
            site.manage(
                "shell", "-c", "from people.models import FaceImage; print(FaceImage.objects.in_gallery().count())"
            ).split()[-1]
        )
        synthetic = max(0, size - enrolled)
        import_s = 0.0
        if synthetic:
            path = Path(tmp) / "synthetic.npz"
            synthetic_file(path, model, synthetic, embedder, seed=size)
            started = time.perf_counter()
            site.manage("import_embeddings", str(path), "--legal-basis", "explicit_consent")
            import_s = time.perf_counter() - started
            path.unlink()
        started = time.perf_counter()
        report = site.manage("shell", "-c", "from recognition.tasks import write_gallery_snapshot as w; print(w(force=True))")
        snapshot_s = time.perf_counter() - started
        snapshot_bytes = sum(p.stat().st_size for p in (Path(tmp) / "gallery").rglob("*") if p.is_file())

        first, port, ready_s = site.start_process("web-1")
        try:
            first_ms, payload = _recognize(port, token, body, content_type)
            assert payload["faces"], payload
            latencies = [_recognize(port, token, body, content_type)[0] for _ in range(requests)]
            # past ~10k faces the threshold in force (open set per search) is above this probe's own
            # score, so it is answered "no match"; staff's candidates=all shows the search still
            # ranks the probe's person first (untimed)
            ranked = E.Api(port, token).call("POST", "/api/v1/recognize/", *_multipart_fields(frame_jpeg(), candidates="all"))
            best = ranked["faces"][0]["candidates"][0]
            one = memory_mb(first.pid)
            snapshot = Path(tmp) / "gallery"
            one_mapped = E.smaps_under(first.pid, snapshot)
            # memory after varied traffic: an IVF index is paged in where queries look
            probes, *_ = E.lfw_sets(lfw_dir, varied, batch_people)
            api = E.Api(port, token)
            probe_ms = E.varied_probes(api, probes)
            one_varied, one_varied_mapped = memory_mb(first.pid), E.smaps_under(first.pid, snapshot)
            second, port2, ready2_s = site.start_process("web-2")
            try:
                _recognize(port2, token, body, content_type)
                E.varied_probes(E.Api(port2, token), probes)
                both = (memory_mb(first.pid), memory_mb(second.pid))
                both_mapped = (E.smaps_under(first.pid, snapshot), E.smaps_under(second.pid, snapshot))
            finally:
                second.terminate()
                second.wait(30)
            enrollment = E.enrollment_and_retrain(site, api, lfw_dir, float(np.median(probe_ms)), batch_people, retrain_timeout)
        finally:
            first.terminate()
            first.wait(30)
        row = {
            "faces": payload["gallery_size"],
            "import_s": import_s,
            "snapshot_s": snapshot_s,
            "snapshot_mb": snapshot_bytes / 2**20,
            "snapshot_report": report.strip().splitlines()[-1],
            "ready_s": ready_s,
            "second_ready_s": ready2_s,
            "first_ms": first_ms,
            "p50_ms": float(np.median(latencies)),
            "p95_ms": float(np.percentile(latencies, 95)),
            "matched": bool(payload["faces"][0]["match"]),
            "threshold": payload.get("threshold"),
            "best_candidate": [best["name"], best["similarity"]],
            "one_worker": one,
            "one_worker_mapped": one_mapped,
            "probe_p50_ms": float(np.median(probe_ms)),
            "probes": len(probe_ms),
            "one_worker_varied": one_varied,
            "one_worker_varied_mapped": one_varied_mapped,
            "two_workers": both,
            "two_workers_mapped": both_mapped,
            **enrollment,
        }
        out(f"- {size:,}: {json.dumps(row, default=lambda v: round(v, 1))}")
        return row


def _table(results: dict, out) -> None:
    base = results[min(results)]
    out(
        "\n| enrolled faces | recognize p50 | vs ~100 | p95 | first request after start | server ready after | "
        "snapshot build / size | worker RSS / PSS | 2nd worker RSS / PSS / private |\n|---|---|---|---|---|---|---|---|---|"
    )
    for r in results.values():
        out(
            f"- {r['faces']:,} faces: threshold in force {r['threshold']}, the probe "
            f"{'matched' if r['matched'] else 'not matched'}; best candidate {r['best_candidate'][0]} {r['best_candidate'][1]}"
        )
    for r in results.values():
        one, second = r["one_worker"], r["two_workers"][1]
        out(
            f"| {r['faces']:,} | {r['p50_ms']:.0f} ms | {r['p50_ms'] / base['p50_ms']:.2f}x | {r['p95_ms']:.0f} ms | "
            f"{r['first_ms'] / 1000:.2f} s | {r['ready_s']:.1f} s | {r['snapshot_s']:.0f} s / {r['snapshot_mb']:.0f} MiB | "
            f"{one['rss']:.0f} / {one['pss']:.0f} MiB | {second['rss']:.0f} / {second['pss']:.0f} / {second['private']:.0f} MiB |"
        )


def _enrollment_table(results: dict, out) -> None:
    base = results[min(results)]
    out(
        f"\n| enrolled faces | varied probes p50 ({base['probes']} LFW photos) | next request after an enrollment "
        "| matched | enrollment photos/s (vs ~100) | during a retrain (vs ~100) | retrain wall / peak RSS |"
        "\n|---|---|---|---|---|---|---|"
    )
    for r in results.values():
        batch, during, retrain = r["batch"], r["batch_during_retrain"], r["retrain"]
        out(
            f"| {r['faces']:,} | {r['probe_p50_ms']:.0f} ms | median {r['next_request_ms']:.0f} ms ({r['next_request_vs_probe_p50']:.2f}x p50; "
            f"worst {r.get('next_request_max_vs_probe_p50', float('nan')):.2f}x) "
            f"| {r.get('matched_count', int(r['matched_at_once']))} of {r['enrolled_status']} "
            f"| {batch['photos_per_s']:.2f} ({batch['photos_per_s'] / base['batch']['photos_per_s']:.2f}x){_worker(batch)} "
            f"| {during['photos_per_s']:.2f} ({during['photos_per_s'] / base['batch']['photos_per_s']:.2f}x){_worker(during)}; "
            f"run {'/'.join(during['retrain_state_after'])} "
            f"| {retrain['seconds']:.0f} s{'' if retrain['finished'] else ' (NOT finished)'} {retrain['status']} / {retrain['peak_rss_mb']:.0f} MiB |"
        )
    out(
        "\n| enrolled faces | after 1 probe: PSS / snapshot pages | after varied probes: RSS / PSS / snapshot pages (Rss) "
        "| two workers: 1st PSS / 2nd PSS / 2nd private / snapshot pages PSS each | gallery part vs ~100 (PSS) | 2nd worker's extra vs ~100 (private) |"
        "\n|---|---|---|---|---|---|"
    )
    for r in results.values():
        one, mapped, varied, vmapped = (
            r["one_worker"],
            r["one_worker_mapped"],
            r["one_worker_varied"],
            r["one_worker_varied_mapped"],
        )
        (a, b), (am, bm) = r["two_workers"], r["two_workers_mapped"]
        gallery = varied["pss"] - base["one_worker_varied"]["pss"]
        second = b["private"] - base["two_workers"][1]["private"]
        out(
            f"| {r['faces']:,} | {one['pss']:.0f} / {mapped['rss']:.0f} MiB | {varied['rss']:.0f} / {varied['pss']:.0f} / {vmapped['rss']:.0f} MiB "
            f"| {a['pss']:.0f} / {b['pss']:.0f} / {b['private']:.0f} / {am['pss']:.0f}+{bm['pss']:.0f} MiB | {gallery:+.0f} MiB | {second:+.0f} MiB |"
        )


def _multipart_fields(jpeg: bytes, **fields: str) -> tuple[bytes, str]:
    body, content_type = _multipart("image", "frame.jpg", jpeg)
    boundary = content_type.split("boundary=")[1]
    extra = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    )
    return extra + body, content_type


def _worker(batch: dict) -> str:
    rate = batch.get("worker_photos_per_s")
    return f", worker {rate:.2f}" if rate else ""


def _reset_postgres(database_url: str) -> None:
    import psycopg

    name = database_url.rsplit("/", 1)[1]
    admin = database_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
