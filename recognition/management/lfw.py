"""What the LFW commands (evaluate_lfw, evaluate_fusion, fit_fusion) share: the pairs of an LFW
folder, or a CommandError that says what is wrong with it (before any image is embedded)."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import CommandError

from recognition.engine.lfw import Pair, read_pairs


def lfw_pairs(lfw_dir: Path, per_fold: int | None = None, folds: list[int] | None = None, min_folds: int = 1) -> list[Pair]:
    """``pairs.txt`` of ``lfw_dir``: its first ``per_fold`` same-person and different-person pairs of
    each fold (default all), of ``folds`` only (numbered from 1; default all), in at least
    ``min_folds`` folds (cross-validation needs two), every image they name present."""
    if not (lfw_dir / "pairs.txt").exists():
        raise CommandError(f"{lfw_dir} has no pairs.txt (expected the LFW folder with images_deepfunneled/)")
    try:
        pairs = read_pairs(lfw_dir, per_fold=per_fold)
    except (OSError, ValueError) as err:
        raise CommandError(f"{lfw_dir / 'pairs.txt'} is not LFW's pairs.txt: {err}") from err
    if folds is not None:
        pairs = [p for p in pairs if p.fold + 1 in folds]
    found = len({p.fold for p in pairs})
    if found < min_folds:
        asked = f" of folds {folds}" if folds is not None else ""
        raise CommandError(f"{lfw_dir / 'pairs.txt'} has pairs in {found} folds{asked}; this needs {min_folds} or more")
    missing = sorted(f for f in {p.left for p in pairs} | {p.right for p in pairs} if not (lfw_dir / f).is_file())
    if missing:
        raise CommandError(f"{lfw_dir} lacks {len(missing)} images that pairs.txt names, e.g. {missing[0]}")
    return pairs
