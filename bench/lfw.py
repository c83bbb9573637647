"""LFW 10-fold verification accuracy of the production pipeline, via ``manage.py evaluate_lfw``."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path


def run(lfw_dir: Path, pairs_per_fold: int | None, out) -> dict:
    from django.core.management import call_command

    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "lfw.json"
        options = {"json_path": target, "stdout": io.StringIO()}
        if pairs_per_fold:
            options["pairs_per_fold"] = pairs_per_fold
        call_command("evaluate_lfw", str(lfw_dir), **options)
        result = json.loads(target.read_text())
    scope = f"first {pairs_per_fold} same + {pairs_per_fold} different pairs per fold" if pairs_per_fold else "all 6,000 pairs"
    out(f"\n## LFW 10-fold verification ({scope}), production pipeline\n")
    accuracy = result.get("accuracy_mean")
    std = result.get("accuracy_std")
    flip = " (flip TTA, as the verify endpoint)" if result.get("verify_flip") else ""
    out(f"- accuracy{flip} {100 * accuracy:.2f}% +- {100 * std:.2f}%, AUC {result.get('auc', float('nan')):.4f}")
    plain = result.get("no_flip")
    if plain and result.get("verify_flip"):
        out(
            f"- without flip (recognition's gallery embeddings) {100 * plain['accuracy_mean']:.2f}% +- {100 * plain['accuracy_std']:.2f}%"
        )
    out(f"- full result: `{json.dumps({k: v for k, v in result.items() if not isinstance(v, (list, dict))})}`")
    return result
