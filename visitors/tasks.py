"""django-q task of visitors (scheduled daily by migration 0001)."""

from . import services


def purge_expired() -> str:
    report = services.purge_expired()
    return f"{report.sightings_deleted} visitor sightings and {report.visitors_deleted} visitors deleted"
