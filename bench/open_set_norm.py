"""Open set per search: does the independence model hold on the people it is calibrated on, and does
score normalisation (Z-norm, T-norm) name more people at the same stranger rate? (issue 15; offline
study: nothing served, no threshold and no committed data file changes.)

People and galleries are ``bench/open_set_variants.py``'s (``lfw_run.open_set_split``): 1,500 LFW
``people.txt`` folds 1-5 people, one image each (the calibration people: the impostor tails of
``calibrate_open_set`` are made of them), and, from people only in folds 6-10, 700 enrolled (1st image
enrolled, 2nd their probe) and 1,000 strangers (one image; enrolled people left out of a gallery are
strangers too), galleries of 100 and 300 people drawn 20 times with its seeds, 700 = everyone once.
Embedders: FaceNet (TFLite, no flip) and today's fused embedder (FaceNet + dlib chip at the served
cosine weight), as in that script. Target: 1% false accepts per search.

1. Diagnosis, on the calibration people only. The tail is the product's (every pair of the 1,500).
   ``--splits`` fixed-seed splits of the 1,500 into N gallery people and 1,500 - N strangers, N in
   ``--sizes``: the share of strangers whose best score over the N faces reaches the model's
   threshold ``calibrate([tail], N, 1%)``, beside what independence predicts from the pairs
   actually scored there (``1 - (1 - p)^N``, p the split's own per-pair rate at t) and from the
   per-stranger rates (the mean of ``1 - (1 - p_i)^N``: stranger-to-stranger heterogeneity, the one
   dependence independence ignores for a gallery of distinct people). The correction is fitted here
   only: the threshold at which the pooled measured rate is the target gives an effective gallery
   size ``N_eff = log(1 - 1%) / log(1 - p_tail(t))``; the geometric mean of ``N_eff / N`` over the
   sizes is the factor applied on folds 6-10 (threshold ``calibrate([tail], factor * N, 1%)``).
   On folds 6-10 the same diagnosis is reported beside the measured rate (per-pair rate of the
   scored pairs against the tail's), to tell tail shift from dependence.
2. Score normalisation. The 1,500 calibration people are split once (seed ``--cohort-seed``) into a
   cohort (``--cohort`` people) and the rest, the tail people. Z-norm: a gallery template's score is
   ``(s - mu_g) / sd_g``, mu_g, sd_g its cosines with the cohort (stored once per template at
   enrolment; re-ranks the gallery). T-norm: ``(s - mu_q) / sd_q`` from the probe's cosines with the
   cohort (K more inner products per search; does not re-rank). S-norm: their mean. AS-norm
   (adaptive S-norm; added after the first run showed Z/T/S-norm losing, ``--top`` 100 set before it
   ran and not varied): S-norm with each side's ``--top`` most similar cohort members. The threshold
   of each comes from the tail of the normalised scores of every ordered pair of tail people
   (cohort statistics from the cohort only), through the same ``calibrate`` as raw scores. Raw
   scores are shown with the product's tail (all 1,500) and with the tail people's only (same
   people as the normalised tails); AS-norm also with a cross-fitted tail (the cohort's pairs
   normalised by the tail people pooled in: all 1,500 people, as the raw tail). Reported on folds
   6-10: named and strangers accepted at the thresholds calibrated on folds 1-5, and (diagnostic,
   chosen on folds 6-10, not deployable) named at the threshold whose pooled stranger rate there is 1%, i.e. at one measured false-accept rate;
   exact McNemar on "named" against raw scores (product tail), first gallery of each size, at each
   one's calibrated and at the equal-measured-rate threshold. Search cost: the share of searches
   whose normalised best face is outside the raw top-k (a product re-ranking only the index's top-k
   would miss those), and microseconds per single-probe search, raw and AS-norm side by side.
   ``--cohort-seed`` 1 is the reported run; 2 and 3 show how much the cohort draw moves it.

Nothing is tuned on folds 6-10.

    FACE_EMBED_RUNTIME=tflite FACE_DLIB_RUNTIME=tflite TF_CPP_MIN_LOG_LEVEL=3 \\
        .venv/bin/python -m bench.open_set_norm --lfw ../shared/datasets/lfw [--draws 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from .open_set_variants import embed_open_set_people, gallery_draws, open_set_rows


def cohort_stats(templates: np.ndarray, cohort: np.ndarray, top: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd of each template's cosines with the cohort (with ``top``: with its ``top`` most
    similar cohort members only, as adaptive S-norm): (N, D), (K, D) unit -> (N,), (N,)."""
    scores = templates @ cohort.T
    if top is not None:
        scores = np.partition(scores, -top, axis=1)[:, -top:]
    return scores.mean(axis=1), scores.std(axis=1)


def normalised_scorer(kind: str, cohort: np.ndarray, top: int = 100):
    """``score(queries, gallery) -> (Q, G)`` for ``kind`` in raw / z / t / s / as (adaptive S-norm:
    S-norm with each side's ``top`` most similar cohort members)."""

    def score(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
        raw = queries @ gallery.T
        if kind == "raw":
            return raw
        k = top if kind == "as" else None
        g_mu, g_sd = cohort_stats(gallery, cohort, k)
        q_mu, q_sd = cohort_stats(queries, cohort, k)
        z = (raw - g_mu[None, :]) / g_sd[None, :]
        t = (raw - q_mu[:, None]) / q_sd[:, None]
        return {"z": z, "t": t}.get(kind, 0.5 * (z + t))

    return score


def normalised_tail(people: np.ndarray, score, source: str, more=()):
    """The impostor tail of ``score`` over every ordered pair of ``people`` (one image each);
    ``more``: (people, score) whose ordered pairs' scores are pooled in too."""
    from recognition.engine.open_set import ImpostorTail

    parts = []
    for group, scorer in ((people, score), *more):
        matrix = scorer(group, group)
        parts.append(matrix[~np.eye(len(group), dtype=bool)])
    return ImpostorTail.from_scores(np.concatenate(parts), source)


def _far_quantile_threshold(best: np.ndarray, target: float) -> float:
    """The threshold at which ``target`` of these best scores are accepted (as open_set_rows)."""
    return float(np.sort(best)[::-1][max(int(np.floor(target * len(best))) - 1, 0)]) + 1e-6


def _searched(blocks, t: float, size: int, tail) -> dict:
    """Measured and modelled rates per search over stranger x gallery score ``blocks`` at ``t``."""
    hits = [block >= t for block in blocks]
    return {
        "people": size,
        "threshold": t,
        "model_pair_far": tail.pair_far(t),
        "scored_pair_far": float(np.mean([hit.mean() for hit in hits])),
        "independent_from_scored": float(np.mean([-np.expm1(size * np.log1p(-hit.mean())) for hit in hits])),
        "heterogeneous_from_scored": float(np.mean([np.mean(-np.expm1(size * np.log1p(-hit.mean(axis=1)))) for hit in hits])),
        "accepts": int(sum(hit.any(axis=1).sum() for hit in hits)),
        "searches": int(sum(len(hit) for hit in hits)),
    }


def diagnose_calibration(calib: np.ndarray, tail, sizes, splits: int, target: float) -> dict:
    """Part 1 on the calibration people: measured vs modelled rate per search, and N_eff / N."""
    from recognition.engine.open_set import calibrate

    scores = calib @ calib.T
    rows = []
    for size in sizes:
        t = calibrate([tail], size, target, floor=-1.0).threshold
        orders = [np.random.default_rng([seed, size]).permutation(len(calib)) for seed in range(splits)]
        blocks = [scores[np.ix_(order[size:], order[:size])] for order in orders]
        entry = _searched(blocks, t, size, tail)
        entry["threshold_at_target"] = _far_quantile_threshold(np.concatenate([b.max(axis=1) for b in blocks]), target)
        entry["n_eff"] = float(np.log1p(-target) / np.log1p(-tail.pair_far(entry["threshold_at_target"])))
        rows.append(entry)
    factor = float(np.exp(np.mean([np.log(r["n_eff"] / r["people"]) for r in rows])))
    return {"rows": rows, "size_factor": factor}


def diagnose_folds_6_10(embeddings, split, row, tail, sizes, draws: int, target: float) -> list[dict]:
    """The same diagnosis on folds 6-10 galleries (pooled over the open-set draws), with a 95%
    interval of the measured rate from a bootstrap over the stranger people."""
    from recognition.engine.open_set import calibrate

    enrolled = embeddings[[row[g] for g, _ in split.enrolled]]
    probes = embeddings[[row[p] for _, p in split.enrolled]]
    strangers = embeddings[[row[s] for s in split.strangers]]
    out = []
    for size in sizes:
        real = min(size, len(enrolled))
        t = calibrate([tail], real, target, floor=-1.0).threshold
        blocks = []
        # per folds 6-10 person: searches as a stranger and accepts
        person_accepts = np.zeros(len(strangers) + len(enrolled))
        person_searches = np.zeros(len(strangers) + len(enrolled))
        for chosen, left_out in gallery_draws(len(enrolled), size, draws):
            blocks.append(np.concatenate([strangers, probes[left_out]]) @ enrolled[chosen].T)
            who = np.concatenate([np.arange(len(strangers)), len(strangers) + left_out])
            person_accepts[who] += blocks[-1].max(axis=1) >= t
            person_searches[who] += 1
        entry = _searched(blocks, t, real, tail)
        entry["people"] = size
        entry["interval_95"] = _people_bootstrap(person_accepts, person_searches)
        out.append(entry)
    return out


def _people_bootstrap(accepts: np.ndarray, searches: np.ndarray, resamples: int = 2000) -> tuple[float, float]:
    """95% interval of the pooled acceptance rate, resampling the stranger people (their searches
    across the galleries of one size are not independent)."""
    pick = np.random.default_rng(0).integers(0, len(accepts), (resamples, len(accepts)))
    rates = accepts[pick].sum(axis=1) / np.maximum(searches[pick].sum(axis=1), 1)
    return float(np.quantile(rates, 0.025)), float(np.quantile(rates, 0.975))


def outside_raw_top_k(embeddings, split, row, score, sizes, ks=(5, 10, 50)) -> dict:
    """Share of searches (probes and strangers, first gallery of each size) whose best face under
    ``score`` is not among the raw top-k."""
    enrolled = embeddings[[row[g] for g, _ in split.enrolled]]
    probes = embeddings[[row[p] for _, p in split.enrolled]]
    strangers = embeddings[[row[s] for s in split.strangers]]
    out = {}
    for size in sizes:
        chosen, left_out = next(gallery_draws(len(enrolled), size, 1))
        queries = np.concatenate([probes[chosen], strangers, probes[left_out]])
        gallery = enrolled[chosen]
        best = score(queries, gallery).argmax(axis=1)
        raw_rank = (queries @ gallery.T > (queries @ gallery.T)[np.arange(len(queries)), best][:, None]).sum(axis=1)
        out[size] = {k: int((raw_rank >= k).sum()) for k in ks} | {"searches": len(queries)}
    return out


def search_cost(embeddings: np.ndarray, cohort: np.ndarray, sizes, top: int, k: int = 10, repeats: int = 300) -> dict:
    """Microseconds per single-probe search, side by side: raw (one matrix-vector product over the
    gallery and its best), and AS-norm's extra work (the probe's K cohort products and top-``top``
    statistics, the raw top-``k`` re-ranked with the templates' stored statistics)."""
    rng = np.random.default_rng(0)
    out = {}
    for size in sizes:
        gallery = embeddings[rng.choice(len(embeddings), min(size, len(embeddings)), replace=False)]
        g_mu, g_sd = cohort_stats(gallery, cohort, top)
        probes = embeddings[rng.choice(len(embeddings), repeats)]
        started = time.perf_counter()
        for q in probes:
            raw = gallery @ q
            raw.argmax()
        raw_us = (time.perf_counter() - started) / repeats * 1e6
        started = time.perf_counter()
        for q in probes:
            raw = gallery @ q
            best = np.argpartition(raw, -k)[-k:]
            c = np.partition(cohort @ q, -top)[-top:]
            q_mu, q_sd = c.mean(), c.std()
            s = 0.5 * ((raw[best] - g_mu[best]) / g_sd[best] + (raw[best] - q_mu) / q_sd)
            s.argmax()
        out[size] = {"raw_us": raw_us, "as_norm_us": (time.perf_counter() - started) / repeats * 1e6}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lfw", type=Path, required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 700])
    parser.add_argument("--target", type=float, default=0.01)
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--splits", type=int, default=10, help="Gallery / stranger splits of the calibration people (part 1).")
    parser.add_argument("--cohort", type=int, default=750, help="Calibration people in the normalisation cohort (part 2).")
    parser.add_argument("--cohort-seed", type=int, default=1)
    parser.add_argument("--top", type=int, default=100, help="Cohort members per side in adaptive S-norm (set a priori).")
    parser.add_argument("--json", dest="json_path", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "facesite.settings")
    import django

    django.setup()
    from django.conf import settings

    from recognition import pipelines
    from recognition.engine.dlib_descriptor import DlibDescriptor
    from recognition.engine.fusion import fuse_templates, mcnemar
    from recognition.engine.open_set import ImpostorTail, cross_person_scores
    from recognition.pipelines import fusion_calibration

    started = time.time()
    cache_dir = Path(settings.TRAINING_CACHE_DIR)
    pipe = pipelines.pipeline("facenet")
    descriptor = DlibDescriptor("landmarks", runtime=settings.FACE_DLIB_RUNTIME, cache_dir=cache_dir)
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    split, files, _, misses, f, chips = embed_open_set_people(pipe, descriptor, args.lfw, cache_dir / "open-set-variants", log)
    served_v = round(float(fusion_calibration.get()["cosine_weight"]), 4)
    embedders = {
        "FaceNet": f,
        f"fused (chip, v {served_v:.4f})": fuse_templates(f, np.stack([chips[x] for x in files]), served_v),
    }
    row = {x.split("/", 1)[1]: i for i, x in enumerate(files)}
    calib_rows = np.array([row[c] for c in split.calibration])
    order = np.random.default_rng(args.cohort_seed).permutation(len(calib_rows))
    cohort_rows, tail_rows = calib_rows[order[: args.cohort]], calib_rows[order[args.cohort :]]
    out: dict = {"misses": misses, "cohort": len(cohort_rows), "tail_people": len(tail_rows), "served_v": served_v}
    print(
        f"\n{len(split.enrolled)} enrolled / {len(split.strangers)} strangers (folds 6-10); {len(calib_rows)} calibration people "
        f"(folds 1-5): cohort {len(cohort_rows)}, tail people {len(tail_rows)}; target {args.target:.0%} per search; "
        f"{misses} detector misses"
    )
    for name, emb in embedders.items():
        calib = emb[calib_rows]
        tail = ImpostorTail.from_scores(cross_person_scores(calib, np.arange(len(calib)), max_faces=len(calib)))
        diag = diagnose_calibration(calib, tail, args.sizes, args.splits, args.target)
        later = diagnose_folds_6_10(emb, split, row, tail, args.sizes, args.draws, args.target)
        print(f"\n### {name}: part 1, the per-search model (tail of the {len(calib)} calibration people, {tail.n_pairs} pairs)\n")
        print(
            "| people | where | threshold | p(t) tail | p(t) scored pairs | indep. from scored | heterog. from scored "
            "| **measured** | t at 1% | N_eff / N |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r, s in zip(diag["rows"], later):
            print(
                f"| {r['people']} | folds 1-5 ({args.splits} splits) | {r['threshold']:.4f} | {r['model_pair_far']:.2e} | "
                f"{r['scored_pair_far']:.2e} | {r['independent_from_scored']:.2%} | {r['heterogeneous_from_scored']:.2%} | "
                f"{r['accepts']}/{r['searches']} ({r['accepts'] / r['searches']:.2%}) | {r['threshold_at_target']:.4f} | "
                f"{r['n_eff'] / r['people']:.2f} |"
            )
            print(
                f"| {s['people']} | folds 6-10 ({args.draws if s['people'] < len(split.enrolled) else 1} draws) | "
                f"{s['threshold']:.4f} | {s['model_pair_far']:.2e} | {s['scored_pair_far']:.2e} | "
                f"{s['independent_from_scored']:.2%} | {s['heterogeneous_from_scored']:.2%} | "
                f"{s['accepts']}/{s['searches']} ({s['accepts'] / s['searches']:.2%}; 95% "
                f"{s['interval_95'][0]:.2%}-{s['interval_95'][1]:.2%}) | | |"
            )
        print(f"\nfitted on folds 1-5: gallery size factor {diag['size_factor']:.3f}")

        tail_people = emb[tail_rows]
        cohort = emb[cohort_rows]
        tails = {
            "raw, product tail (1,500)": (tail, None),
            f"raw, tail people ({len(tail_rows)})": (
                ImpostorTail.from_scores(
                    cross_person_scores(tail_people, np.arange(len(tail_people)), max_faces=len(tail_people))
                ),
                None,
            ),
        }
        for kind, label in (("z", "Z-norm"), ("t", "T-norm"), ("s", "S-norm (Z+T)/2"), ("as", f"AS-norm (top {args.top})")):
            scorer = normalised_scorer(kind, cohort, args.top)
            tails[label] = (normalised_tail(tail_people, scorer, label), scorer)
        # the same searches, the tail cross-fitted: the tail people normalised by the cohort, and the
        # cohort normalised by the tail people, pooled (all 1,500 calibration people, as the raw tail)
        scorer = tails[f"AS-norm (top {args.top})"][1]
        swapped = normalised_scorer("as", tail_people, args.top)
        label = f"AS-norm (top {args.top}), cross-fitted tail"
        tails[label] = (normalised_tail(tail_people, scorer, label, more=[(cohort, swapped)]), scorer)
        results = {
            label: open_set_rows(emb, split, row, args.sizes, args.target, args.draws, tail=t, score=scorer)
            for label, (t, scorer) in tails.items()
        }
        results[f"raw, product tail, N x {diag['size_factor']:.2f} (part 1)"] = open_set_rows(
            emb, split, row, args.sizes, args.target, args.draws, tail=tail, size_factor=diag["size_factor"]
        )
        print(f"\n### {name}: part 2, folds 6-10, thresholds from folds 1-5\n")
        print(
            "| people (draws) | scores | threshold | **named** | wrong | **strangers accepted** | McNemar vs raw (1st gallery) "
            "| named at 1% measured (diag.) | its McNemar |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        base = results["raw, product tail (1,500)"]
        mc = {}
        for i, size in enumerate(args.sizes):
            for label, rows in results.items():
                r = rows[i]
                a, b, p = mcnemar(r["named_mask"], base[i]["named_mask"])
                ea, eb, ep = mcnemar(r["equal_far_named_mask"], base[i]["equal_far_named_mask"])
                mc[f"{name} {size} {label}"] = {"more": a, "fewer": b, "p": p, "equal_far": [ea, eb, ep]}
                print(
                    f"| {size} ({r['draws']}) | {label} | {r['threshold']:.3f} | {r['named']}/{r['enrolled']} "
                    f"({r['named'] / r['enrolled']:.1%}) | {r['named_wrong']} | {r['false_accepts']}/{r['strangers']} "
                    f"({r['false_accepts'] / r['strangers']:.2%}) | +{a} / -{b}, p = {p:.3g} | "
                    f"{r['equal_far_named']}/{r['enrolled']} ({r['equal_far_named'] / r['enrolled']:.1%}) at "
                    f"{r['equal_far_accepts']}/{r['strangers']} | +{ea} / -{eb}, p = {ep:.3g} |"
                )
        for rows in results.values():
            for r in rows:
                del r["named_mask"], r["equal_far_named_mask"]
        reach = {
            label: outside_raw_top_k(emb, split, row, tails[label][1], args.sizes)
            for label in ("Z-norm", "S-norm (Z+T)/2", f"AS-norm (top {args.top})")
        }
        for label, by_size in reach.items():
            text = "; ".join(
                f"{size}: " + ", ".join(f"top-{k} {v[k]}" for k in v if k != "searches") + f" of {v['searches']}"
                for size, v in by_size.items()
            )
            print(f"\n{label}: searches whose normalised best face is outside the raw top-k (1st gallery): {text}")
        cost = search_cost(emb, cohort, args.sizes, args.top)
        print(
            f"\nPer single-probe search (numpy, one process, {emb.shape[1]}-d, cohort {len(cohort)}): "
            + "; ".join(f"{n}: raw {c['raw_us']:.0f} us, AS-norm {c['as_norm_us']:.0f} us" for n, c in cost.items())
        )
        out[name] = {
            "search_cost_us": cost,
            "calibration": diag,
            "folds_6_10": later,
            "results": results,
            "mcnemar_named": mc,
            "outside_top_k": reach,
        }
    out["seconds"] = time.time() - started
    print(f"\n{out['seconds']:.0f} s")
    if args.json_path:
        args.json_path.write_text(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
