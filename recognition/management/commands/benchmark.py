"""The benchmark suite: each measurement side by side with its baseline, medians and ratios.

    python manage.py benchmark [--only detection,live,stream,embedding,gallery,api,lfw,open-set,gallery-api,kiosk] [--quick]
                               [--lfw ../shared/datasets/lfw] [--json var/bench/latest.json]

Prints Markdown tables (copy them into BENCHMARKS.md with the command line). Every part is
bounded: the default run takes minutes, ``--quick`` about a minute or two.
"""

import json
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

PARTS = ("detection", "live", "stream", "embedding", "gallery", "api", "lfw", "open-set", "gallery-api", "kiosk")


class Command(BaseCommand):
    help = "Benchmark the detector, live pipeline, embedder, gallery index, recognize API and LFW accuracy."

    def add_arguments(self, parser):
        parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts: {', '.join(PARTS)}")
        parser.add_argument("--lfw", type=Path, default=Path(settings.BASE_DIR).parent / "shared" / "datasets" / "lfw")
        parser.add_argument("--quick", action="store_true", help="fewer frames, galleries up to 100k, no API baseline")
        parser.add_argument("--lfw-frames", type=int, default=None, help="LFW frames for detection recall (default 150)")
        parser.add_argument("--gallery-sizes", default=None, help="e.g. 10000,100000,1000000")
        parser.add_argument("--lfw-pairs-per-fold", type=int, default=50, help="0 = all 300 + 300 pairs per fold")
        parser.add_argument(
            "--gallery-api-sizes",
            default=None,
            help="gallery-api part: enrolled faces per site (default 100,100000,1000000; quick 100,100000)",
        )
        parser.add_argument("--database-url", default=None, help="gallery-api part: a PostgreSQL database to (re)create and use")
        parser.add_argument(
            "--kiosk-configs",
            default=None,
            help="kiosk part: semicolon-separated configurations (default all of bench.kiosk.CONFIGS; quick: before and product)",
        )
        parser.add_argument("--json", dest="json_path", type=Path, default=None, help="also write every figure as JSON here")

    def handle(
        self,
        only,
        lfw,
        quick,
        lfw_frames,
        gallery_sizes,
        lfw_pairs_per_fold,
        json_path,
        gallery_api_sizes,
        database_url,
        kiosk_configs=None,
        **options,
    ):
        from bench import api, detection, gallery, gallery_api, kiosk, live, stream
        from bench import lfw as lfw_bench
        from bench import open_set as open_set_bench

        parts = [p.strip() for p in only.split(",") if p.strip()]
        unknown = set(parts) - set(PARTS)
        if unknown:
            raise CommandError(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
        if not (lfw / "pairs.txt").exists():
            raise CommandError(f"{lfw} is not the LFW folder (no pairs.txt); pass --lfw DIR")
        sizes = (
            [int(s) for s in gallery_sizes.split(",")]
            if gallery_sizes
            else ([10_000, 100_000] if quick else [10_000, 100_000, 1_000_000])
        )
        n_lfw = lfw_frames or (40 if quick else 150)

        def out(line: str = "") -> None:
            self.stdout.write(line)
            self.stdout.flush()

        out(f"# Benchmark run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
        results = {}
        runners = {
            "detection": lambda: detection.run(lfw, n_lfw, out),
            "live": lambda: live.run(lfw, 10 if quick else 20, out),
            "stream": lambda: stream.run(lfw, 2 if quick else 3, 30 if quick else 60, out),
            "embedding": lambda: live.run_embedding(lfw, 16 if quick else 32, out),
            "gallery": lambda: gallery.run(lfw, sizes, out),
            "api": lambda: api.run(
                out, loads=((1, 10), (4, 20), (16, 32)) if quick else ((1, 20), (4, 40), (16, 64)), baseline=not quick
            ),
            "lfw": lambda: lfw_bench.run(lfw, lfw_pairs_per_fold or None, out),
            "open-set": lambda: open_set_bench.run(
                lfw, out, sizes=(100, 700, 1_000, 10_000) if quick else (100, 700, 1_000, 10_000, 100_000)
            ),
            "gallery-api": lambda: gallery_api.run(
                lfw,
                [int(s) for s in gallery_api_sizes.split(",")]
                if gallery_api_sizes
                else ([100, 100_000] if quick else [100, 100_000, 1_000_000]),
                out,
                database_url=database_url,
                varied=50 if quick else 200,
                batch_people=15 if quick else 30,
            ),
            "kiosk": lambda: (
                kiosk.run_runtime(lfw, out, pairs_per_fold=lfw_pairs_per_fold or None)
                | kiosk.run(
                    out,
                    configs=kiosk_configs.split(";")
                    if kiosk_configs
                    else (["before (no pool, keras)", "product (pool, tflite)"] if quick else None),
                    seconds=8 if quick else 15,
                )
            ),
        }
        for part in parts:
            started = time.perf_counter()
            results[part] = runners[part]()
            out(f"\n_{part}: {time.perf_counter() - started:.0f} s_")
        if json_path:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(results, indent=2, default=str))
