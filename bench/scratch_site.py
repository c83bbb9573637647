"""A throwaway site for the benchmarks that need one (SQLite, media and gallery snapshots in a
temporary folder, tasks run in the request), set up before Django is imported."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def scratch_site(prefix: str, **env: str) -> Path:
    """Point the settings at a new temporary folder (plus ``env``), set Django up and migrate;
    returns the folder. Call it before importing anything that needs Django."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ.update(
        SQLITE_PATH=str(base / "db.sqlite3"),
        MEDIA_ROOT=str(base / "media"),
        GALLERY_SNAPSHOT_DIR=str(base / "gallery"),
        Q_SYNC="1",
        TRAINING_RETRAIN_ON_ENROLLMENT="0",
        DJANGO_SETTINGS_MODULE="facesite.settings",
        **env,
    )
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return base
