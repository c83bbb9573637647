"""What deleting one photo or erasing one person costs on disk: the snapshot rewritten without them.

    .venv/bin/python -m bench.snapshot_rewrite

A saved gallery of N synthetic unit vectors (5 per person, IVF as the server builds it) and
``Gallery.rewrite_without`` of one face and of one person, 3 times each (median); the rewrite runs
when the deletion commits (recognition/gallery.py, ``forget_after_commit``).
"""

import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from recognition.engine.matching import Gallery


def main(sizes=(100_000, 1_000_000), repeats: int = 3) -> None:
    for n in sizes:
        rng = np.random.default_rng(0)
        embeddings = rng.standard_normal((n, 128)).astype(np.float32)
        embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
        gallery = Gallery(128)
        started = time.perf_counter()
        gallery.replace(embeddings, np.arange(n) // 5, np.arange(n) + 10)
        build = time.perf_counter() - started
        root = Path(tempfile.mkdtemp())
        try:
            source = root / "source"
            source.mkdir()
            gallery.save(source)
            size = sum(p.stat().st_size for p in source.iterdir()) / 2**20
            times = {"one face": [], "one person": []}
            for repeat in range(repeats):
                for what, people, keys in (("one face", (), [123]), ("one person", [7], ())):
                    target = root / f"target-{repeat}-{what[-1]}"
                    target.mkdir()
                    started = time.perf_counter()
                    Gallery.rewrite_without(source, target, person_ids=people, keys=keys)
                    times[what].append(time.perf_counter() - started)
                    shutil.rmtree(target)
            medians = ", ".join(f"{what}: median {statistics.median(t):.2f} s" for what, t in times.items())
            print(f"{n:,} faces: snapshot {size:.0f} MiB (built in {build:.1f} s); rewrite without {medians}", flush=True)
        finally:
            shutil.rmtree(root)


if __name__ == "__main__":
    main()
