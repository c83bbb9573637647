"""django-q tasks of check-ins (queued by dotted path); the work is in ``checkin.outlier_scan``."""


def scan_outliers(scan_id: int) -> str:
    """A staff-requested site-wide outlier scan: compute it and store its outlier faces."""
    from . import outlier_scan

    return outlier_scan.run_scan(scan_id)


def scheduled_outlier_scan() -> str:
    """The daily schedule "checkin: outlier scan": a scan when the gallery changed since the last."""
    from . import outlier_scan

    scan = outlier_scan.scan_if_gallery_changed()
    return "no outlier scan needed" if scan is None else f"outlier scan {scan.pk} asked for"
