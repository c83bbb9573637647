"""Two checkouts of the app side by side through the real HTTP API: ``recognize`` and a photo upload,
the two servers taking turns in a shuffled order each round; medians and the ratio after/before.

    .venv/bin/python -m bench.ab_trees --before ../wt-old --after . --rounds 8

Each tree's server is started by that tree's own ``bench.api.Server`` (its code, its SQLite
database, the fixture people enrolled), in a child process of this one (``--serve TREE``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def serve(tree: Path) -> None:
    """Start ``tree``'s server, print {"port", "token"}, stop it when stdin closes."""
    sys.path.insert(0, str(tree))
    os.chdir(tree)
    os.environ["THROTTLE_ENROLL"] = "1000000/min"
    from bench import api
    from bench import frames as F

    server = api.Server("mtcnn-graph", Path(tempfile.mkdtemp(prefix="ab-trees-")))
    server.manage("migrate", "--noinput")
    server.manage("import_faces", str(F.PEOPLE), "--legal-basis", "explicit_consent")
    token = api._token(server)
    server.start()
    print(json.dumps({"port": server.port, "token": token}), flush=True)
    sys.stdin.read()
    server.stop()


def compare(trees: dict[str, Path], rounds: int) -> None:
    from . import api
    from . import frames as F

    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "bench.ab_trees", "--serve", str(tree)],
            cwd=Path(__file__).resolve().parent.parent,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for name, tree in trees.items()
    }
    servers = {name: json.loads(proc.stdout.readline()) for name, proc in procs.items()}
    recognize = api._multipart("image", "frame.jpg", api.frame_jpeg())
    upload = api._multipart("image", "p.jpg", (F.PEOPLE / "paul_rudd" / "1.jpg").read_bytes())

    def call(name: str, path: str, body: bytes, content_type: str) -> tuple[float, dict]:
        server = servers[name]
        request = urllib.request.Request(f"http://127.0.0.1:{server['port']}{path}", data=body, method="POST")
        request.add_header("Authorization", f"Token {server['token']}")
        request.add_header("Content-Type", content_type)
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read() or b"{}")
        return (time.perf_counter() - started) * 1000, answer

    person = {}
    for name in trees:
        body = json.dumps({"name": "AB Upload", "legal_basis": "explicit_consent"}).encode()
        person[name] = call(name, "/api/v1/people/", body, "application/json")[1]["id"]
        for _ in range(3):
            call(name, "/api/v1/recognize/", *recognize)  # warm-up
    times = {kind: {name: [] for name in trees} for kind in ("recognize", "photo upload")}
    order, rng = list(trees), random.Random(7)
    try:
        for _ in range(rounds):
            rng.shuffle(order)
            for name in order:
                times["recognize"][name] += [call(name, "/api/v1/recognize/", *recognize)[0] for _ in range(5)]
                path = f"/api/v1/people/{person[name]}/faces/"
                times["photo upload"][name] += [call(name, path, *upload)[0] for _ in range(2)]
    finally:
        for proc in procs.values():
            proc.stdin.close()
            proc.wait(timeout=60)
    before, after = list(trees)
    for kind, samples in times.items():
        b, a = statistics.median(samples[before]), statistics.median(samples[after])
        print(f"{kind}: n={len(samples[before])} each, median before {b:.1f} ms, after {a:.1f} ms, after/before {a / b:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path)
    parser.add_argument("--after", type=Path)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve.resolve())
    else:
        compare({"before": args.before.resolve(), "after": args.after.resolve()}, args.rounds)


if __name__ == "__main__":
    main()
