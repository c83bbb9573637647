"""/healthz/: is this process able to serve? (For load balancers and the production run script.)"""

from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from django.views.decorators.http import require_GET


@require_GET
def healthz(request):
    checks = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as err:
        checks["database"] = f"unavailable: {err.__class__.__name__}"
    if settings.REDIS_URL:
        try:
            import redis

            redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=2).ping()
            checks["redis"] = "ok"
        except Exception as err:
            checks["redis"] = f"unavailable: {err.__class__.__name__}"
    healthy = all(value == "ok" for value in checks.values())
    body = {"status": "ok" if healthy else "unavailable", **checks}
    if checks["database"] == "ok":
        body["embedder"] = _embedder_status()
    return JsonResponse(body, status=200 if healthy else 503)


def _embedder_status() -> dict:
    """The served embedder and how many enrolled faces lack it (not matched until ``reembed_faces``);
    counted at most once a minute per process (a COUNT over the gallery is not free at a million faces)."""
    import time

    from django.apps import apps  # this module sits below the apps: it reaches the model by name

    now = time.monotonic()
    if _embedder_cache.get("at", -1e9) < now - 60 or _embedder_cache.get("setting") != settings.FACE_EMBEDDER:
        faces = apps.get_model("people", "FaceImage").objects
        _embedder_cache.update(
            at=now,
            setting=settings.FACE_EMBEDDER,
            value={"served": settings.FACE_EMBEDDER, "faces_lacking_served_embedder": faces.lacking_served_embedder().count()},
        )
    return _embedder_cache["value"]


_embedder_cache: dict = {}
