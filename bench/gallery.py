"""Gallery search at 10k, 100k and 1M faces: the product's index vs exact float32 brute force."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .synthetic import EmbeddingModel, similarity_levels
from .timing import interleaved, table_header


def real_embeddings(lfw_dir: Path, n_people: int = 80, per_person: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """FaceNet embeddings of LFW people with at least ``per_person`` photos (their first ones)."""
    from recognition.engine.embedding import FaceEmbedder

    from . import frames as F

    folders = sorted(p for p in (Path(lfw_dir) / "images_deepfunneled").iterdir() if p.is_dir())
    rng = np.random.default_rng(7)
    rich = [f for f in folders if len(list(f.glob("*.jpg"))) >= per_person]
    chosen = [rich[i] for i in sorted(rng.choice(len(rich), size=min(n_people, len(rich)), replace=False))]
    from recognition.engine.alignment import align_face
    from recognition.engine.detection import DetectedFace

    box = DetectedFace(box=F.LFW_FACE_BOX, landmarks=np.zeros((5, 2), np.float32), score=1.0)
    crops, labels = [], []
    for person, folder in enumerate(chosen):
        for path in sorted(folder.glob("*.jpg"))[:per_person]:
            crops.append(align_face(F.read_rgb(path), box))
            labels.append(person)
    return FaceEmbedder().embed(np.stack(crops)), np.array(labels)


def run(lfw_dir: Path, sizes: list[int], out, queries: int = 500, per_person: int = 5) -> dict:
    from recognition.engine.index import IndexSettings
    from recognition.engine.matching import Gallery

    real, real_labels = real_embeddings(lfw_dir)
    model = EmbeddingModel.fit(real, real_labels)
    genuine, impostor = similarity_levels(real, real_labels)
    out(
        f"\n## Gallery search (synthetic embeddings fitted to {len(real)} real LFW embeddings of {real_labels.max() + 1} people)\n"
    )
    probe_model_check = model.sample(2000, per_person, seed=11)
    s_genuine, s_impostor = similarity_levels(*probe_model_check)
    out(
        f"Mean cosine similarity, same person / different people: real {genuine:.3f} / {impostor:.3f}, "
        f"synthetic {s_genuine:.3f} / {s_impostor:.3f}. {per_person} faces per person; queries are new faces "
        f"of enrolled people. Settings: {IndexSettings()}.\n"
    )
    out(table_header("NumPy exact float32", "product index"))
    results = {}
    rows = []
    for size in sizes:
        n_people = size // per_person
        centres = model.centres(n_people, seed=size)
        people = np.repeat(np.arange(n_people), per_person)
        embeddings = model.faces(centres, people, seed=size + 1)
        asked = np.random.default_rng(size + 2).integers(0, n_people, queries)
        probes = model.faces(centres, asked, seed=size + 3)

        gallery = Gallery()
        started = time.perf_counter()
        gallery.replace(embeddings, people)
        build_s = time.perf_counter() - started
        index = gallery.index

        def exact(q, embeddings=embeddings):
            scores = embeddings @ q
            top = np.argpartition(scores, -10)[-10:]
            return top[np.argsort(-scores[top])]

        # blocks of 20 queries: a brute-force scan thrashes the caches and leaves BLAS threads
        # spinning, which would otherwise land on the index's very next query
        cmp = interleaved(
            f"top-10 of {size:,} ({index.kind}, nprobe {index.nprobe})",
            lambda block: [exact(q) for q in block],
            lambda block, index=index: [index.search(q[None], 10) for q in block],
            [probes[i : i + 20] for i in range(0, len(probes), 20)],
        )
        cmp.baseline_ms = [ms / 20 for ms in cmp.baseline_ms]  # per query
        cmp.product_ms = [ms / 20 for ms in cmp.product_ms]
        people_ms = [_ms(lambda q=q, gallery=gallery: gallery.search(q[None], top_k=5)) for q in probes[:50]]
        truth = _exact_top1(embeddings, probes)
        _, found = index.search(probes, 1)
        recall = float(np.mean(found[:, 0] == truth))
        add_ms, remove_ms = [], []
        for k in range(20):
            new = model.faces(centres, np.full(per_person, k), seed=k)
            add_ms.append(_ms(lambda g=gallery, k=k, new=new: g.set_person(10_000_000 + k, new, np.arange(per_person))))
            remove_ms.append(_ms(lambda g=gallery, k=k: g.remove_person(10_000_000 + k)))
        cpu_ms = [_cpu_ms(lambda q=q, index=index: index.search(q[None], 10)) for q in probes[:100]]
        memory = index.memory_bytes()
        out(cmp.row())
        out(f"|   ... product index CPU time per query | | {np.median(cpu_ms):.2f} ms | | |")
        rows.append(
            f"| {size:,} | {index.kind} | {recall:.3f} | {memory / 2**20:.0f} MiB | {embeddings.nbytes / 2**20:.0f} MiB | "
            f"{build_s:.1f} s | {np.median(add_ms):.2f} / {np.median(remove_ms):.2f} ms | {np.median(people_ms):.2f} ms |"
        )
        results[size] = {
            "exact_ms": cmp.baseline_median,
            "index_ms": cmp.product_median,
            "speedup": cmp.speedup,
            "recall_at_1": recall,
            "index_bytes": memory,
            "exact_bytes": embeddings.nbytes,
            "build_s": build_s,
            "add_person_ms": float(np.median(add_ms)),
            "remove_person_ms": float(np.median(remove_ms)),
            "gallery_search_ms": float(np.median(people_ms)),
            "index_cpu_ms": float(np.median(cpu_ms)),
        }
        if size == max(sizes) and index.kind != "exact":
            sweep = []
            for nprobe in (32, 64, 96, 128, 150, 200):
                _, found = index.search(probes, 1, nprobe=nprobe)
                ms = [_ms(lambda q=q, index=index, nprobe=nprobe: index.search(q[None], 10, nprobe=nprobe)) for q in probes[:100]]
                cpu = [
                    _cpu_ms(lambda q=q, index=index, nprobe=nprobe: index.search(q[None], 10, nprobe=nprobe))
                    for q in probes[:100]
                ]
                sweep.append(
                    f"| {nprobe} | {np.mean(found[:, 0] == truth):.3f} | {np.median(ms):.2f} ms | {np.median(cpu):.2f} ms |"
                )
            results["nprobe_sweep"] = sweep
            results["screening"] = screening_recall(index, embeddings, probes, out)
    out(
        "\n| enrolled | index | recall@1 vs exact | index memory | float32 matrix | bulk build | add / remove a person (5 faces) "
        "| Gallery.search (top 5 people) |\n|---|---|---|---|---|---|---|---|"
    )
    for row in rows:
        out(row)
    if "nprobe_sweep" in results:
        out(
            f"\nIVF cells scanned per query at {max(sizes):,} faces (CPU time: the query's own, which other processes "
            "waiting for the same cores do not inflate):\n\n| nprobe | recall@1 | median top-10 latency | median CPU time |\n|---|---|---|---|"
        )
        for row in results["nprobe_sweep"]:
            out(row)
    return results


def screening_recall(index, embeddings: np.ndarray, probes: np.ndarray, out, thresholds=(0.55, 0.7, 0.8, 0.9)) -> dict:
    """The enrollment's mislabel check only asks "does anybody score above t?" (t = the threshold in
    force, high in a large gallery). Per ``nprobe``: of the probes whose exact best score is >= t, the
    share the IVF search also finds above t, and the query's CPU time (``screen_nprobe`` is chosen here)."""
    best = np.full(len(probes), -np.inf, np.float32)
    for start in range(0, len(embeddings), 100_000):
        best = np.maximum(best, (probes @ embeddings[start : start + 100_000].T).max(axis=1))
    out(
        f"\nScreening searches at {len(embeddings):,} faces (the mislabel check: is anybody above t?): of the "
        "probes whose exact best is >= t, the share found >= t by the IVF search\n\n"
        f"| nprobe | {' | '.join(f't = {t} (of {int(np.sum(best >= t))})' for t in thresholds)} | median CPU time |\n"
        f"|{'---|' * (len(thresholds) + 2)}"
    )
    rows = {}
    for nprobe in (4, 8, 16, 32, 64, index.nprobe):
        scores, _ = index.search(probes, 3, nprobe=nprobe)
        found = scores[:, 0]
        shares = [float(np.mean(found[best >= t] >= t)) if np.any(best >= t) else float("nan") for t in thresholds]
        cpu = [_cpu_ms(lambda q=q, n=nprobe: index.search(q[None], 24, nprobe=n)) for q in probes[:100]]
        rows[nprobe] = {"found": dict(zip(thresholds, shares)), "cpu_ms": float(np.median(cpu))}
        out(f"| {nprobe} | {' | '.join(f'{v:.4f}' for v in shares)} | {np.median(cpu):.2f} ms |")
    return rows


def _exact_top1(embeddings: np.ndarray, probes: np.ndarray, chunk: int = 100_000) -> np.ndarray:
    """Exact float32 nearest neighbour of every probe (chunked matrix products)."""
    best_score = np.full(len(probes), -np.inf, np.float32)
    best = np.zeros(len(probes), np.int64)
    for start in range(0, len(embeddings), chunk):
        scores = probes @ embeddings[start : start + chunk].T
        top = np.argmax(scores, axis=1)
        better = scores[np.arange(len(probes)), top] > best_score
        best[better], best_score[better] = top[better] + start, scores[np.arange(len(probes)), top][better]
    return best


def _cpu_ms(fn) -> float:
    """CPU time of the calling process (FAISS searches one query on the calling thread)."""
    started = time.process_time()
    fn()
    return (time.process_time() - started) * 1000


def _ms(fn) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000
