"""django-q task of privacy (scheduled daily by migration 0001)."""

from . import services


def apply_retention() -> str:
    report = services.apply_retention()
    return (
        f"{report.photos_deleted} photos, {report.crops_deleted} crops, {report.audit_events_deleted} audit events, "
        f"{report.checkins_deleted} check-ins, {report.webhook_deliveries_deleted} webhook deliveries, "
        f"{report.model_versions_deleted} model versions deleted"
    )
