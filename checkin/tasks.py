"""django-q tasks of check-ins (queued by dotted path); the work is in ``checkin.outlier_scan``."""


def scan_outliers(scan_id: int) -> str:
    """A staff-requested site-wide outlier scan: compute it and store its outlier faces."""
    from . import outlier_scan

    return outlier_scan.run_scan(scan_id)
