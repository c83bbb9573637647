"""Load on /api/v1/recognize/ against a real server on loopback: no 5xx, memory flat.

- 16 concurrent clients for LOAD_TEST_SECONDS (CI: default 20 s; BENCHMARKS.md has the 60 s figures);
- 1000 requests from concurrent clients, the server's resident memory compared after a warm-up of
  200 and after the 1000th (LOAD_MEMORY_REQUESTS to change the count).

The figures of each run are written to bench-results/load-<backend>.json and memory-<backend>.json.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from . import live
from .conftest import PROBES, read

# django_db: the session gallery is built in the test database before it is copied to the live site.
pytestmark = [pytest.mark.servers, pytest.mark.django_db]

CLIENTS = 16
SECONDS = float(os.environ.get("LOAD_TEST_SECONDS", "20"))
# Resident memory of the server: allowed growth from the warmed-up start to the end, and from the
# first half's peak to the second half's (a leak climbs on; a working set levels off).
MAX_RSS_GROWTH_MB = 250
MAX_RSS_SECOND_HALF_GROWTH_MB = 100


def test_sixteen_concurrent_clients_get_no_5xx_and_memory_stays_flat(live_site):
    server = live_site.start_web()
    image = read(PROBES / "obama1.jpg")
    warm = server.recognize(image)  # loads the models
    assert warm.status == 200, warm.body
    assert warm.json()["faces"][0]["match"]["name"] == "Barack Obama"
    # One concurrent round first: the server's buffers and allocator arenas grow to their working
    # size under 16 open requests; growth after that is what would be a leak.
    with ThreadPoolExecutor(CLIENTS) as pool:
        assert {r.status for r in pool.map(lambda _: server.recognize(image), range(CLIENTS))} == {200}
    rss_start = live.rss_mb(server.proc.pid)

    deadline = time.monotonic() + SECONDS
    results: list[tuple[int, float, str | None]] = []
    rss_samples = [rss_start]

    def client() -> None:
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                reply = server.recognize(image)
                match = reply.json()["faces"][0]["match"] if reply.status == 200 else None
                results.append((reply.status, time.monotonic() - started, match and match["name"]))
            except OSError as err:  # a refused or dropped connection counts as a failure
                results.append((599, time.monotonic() - started, repr(err)))

    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(client) for _ in range(CLIENTS)]
        while any(not f.done() for f in futures):
            time.sleep(2)
            rss_samples.append(live.rss_mb(server.proc.pid))
        for f in futures:
            f.result()
    rss_end = live.rss_mb(server.proc.pid)

    statuses = Counter(status for status, _, _ in results)
    latencies = sorted(latency for _, latency, _ in results)
    figures = {
        "backend": live_site.backend,
        "clients": CLIENTS,
        "seconds": SECONDS,
        "requests": len(results),
        "requests_per_second": round(len(results) / SECONDS, 2),
        "statuses": dict(statuses),
        "latency_p50_s": round(statistics.median(latencies), 3),
        "latency_p95_s": round(latencies[int(0.95 * (len(latencies) - 1))], 3),
        "rss_start_mb": round(rss_start, 1),
        "rss_end_mb": round(rss_end, 1),
        "rss_max_mb": round(max(rss_samples), 1),
        "rss_first_half_max_mb": round(max(rss_samples[: len(rss_samples) // 2]), 1),
        "rss_second_half_max_mb": round(max(rss_samples[len(rss_samples) // 2 :]), 1),
    }
    out = live.ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    (out / f"load-{live_site.backend}.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures))

    assert results, "no request completed"
    assert not [s for s in statuses if s >= 500], figures
    assert set(statuses) == {200}, figures
    assert {name for _, _, name in results} == {"Barack Obama"}
    assert rss_end - rss_start < MAX_RSS_GROWTH_MB, figures
    half = len(rss_samples) // 2
    assert max(rss_samples[half:]) - max(rss_samples[:half]) < MAX_RSS_SECOND_HALF_GROWTH_MB, rss_samples
    assert server.proc.poll() is None and live.request(server.url + "/healthz/").status == 200
    live_site.stop(server.proc)


MEMORY_REQUESTS = int(os.environ.get("LOAD_MEMORY_REQUESTS", "1000"))
MEMORY_WARMUP = 200
MEMORY_CLIENTS = 4
# A per-request leak of a tenth of a megabyte (far less than one decoded 640x480 frame, 0.9 MB) would
# add 80 MB over the 800 requests after the warm-up; a levelled-off working set adds almost nothing.
MAX_RSS_GROWTH_AFTER_WARMUP_MB = 0.1 * (MEMORY_REQUESTS - MEMORY_WARMUP)


def test_memory_levels_off_over_a_thousand_requests(live_site):
    server = live_site.start_web()
    image = read(PROBES / "obama1.jpg")
    sent = iter(range(MEMORY_REQUESTS))
    statuses: Counter = Counter()
    names: Counter = Counter()
    rss_by_count: dict[int, float] = {}
    started = time.monotonic()

    lock = threading.Lock()

    def client() -> None:
        for n in sent:  # shared: the clients take the next number until all are sent
            try:
                reply = server.recognize(image)
                match = reply.json()["faces"][0]["match"] if reply.status == 200 else None
                status, name = reply.status, match and match["name"]
            except OSError as err:  # a refused or dropped connection counts as a failure
                status, name = f"error {type(err).__name__}", None
            with lock:
                statuses[status] += 1
                names[name] += 1
            if (n + 1) % 100 == 0:
                rss_by_count[n + 1] = live.rss_mb(server.proc.pid)

    with ThreadPoolExecutor(MEMORY_CLIENTS) as pool:
        for f in [pool.submit(client) for _ in range(MEMORY_CLIENTS)]:
            f.result()
    elapsed = time.monotonic() - started
    rss_warm, rss_end = rss_by_count[MEMORY_WARMUP], live.rss_mb(server.proc.pid)
    figures = {
        "backend": live_site.backend,
        "requests": MEMORY_REQUESTS,
        "clients": MEMORY_CLIENTS,
        "seconds": round(elapsed, 1),
        "requests_per_second": round(MEMORY_REQUESTS / elapsed, 2),
        "statuses": {str(k): v for k, v in statuses.items()},
        "rss_after_warmup_mb": round(rss_warm, 1),
        "rss_end_mb": round(rss_end, 1),
        "growth_after_warmup_mb": round(rss_end - rss_warm, 1),
        "allowed_growth_mb": MAX_RSS_GROWTH_AFTER_WARMUP_MB,
        "rss_every_100_mb": {k: round(v, 1) for k, v in sorted(rss_by_count.items())},
    }
    out = live.ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    (out / f"memory-{live_site.backend}.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures))

    assert statuses == Counter({200: MEMORY_REQUESTS}), figures
    assert names == Counter({"Barack Obama": MEMORY_REQUESTS}), names
    assert rss_end - rss_warm < MAX_RSS_GROWTH_AFTER_WARMUP_MB, figures
    assert server.proc.poll() is None and live.request(server.url + "/healthz/").status == 200
    live_site.stop(server.proc)
