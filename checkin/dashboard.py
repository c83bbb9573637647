"""The staff dashboard in the admin (/admin/dashboard/): check-ins per day and kiosk over a range
(a chart drawn here, server-side, as inline SVG: nothing is fetched from elsewhere), today's
arrivals, today's absentees and the unknown-visitor count.

Days are the site's (settings.TIME_ZONE), as in the attendance report, whose logic gives today's
arrivals and absentees (checkin/reports.py).
"""

from __future__ import annotations

import io
from datetime import date, timedelta

from django.conf import settings
from django.contrib import admin
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.db.models.functions import TruncDate
from django.shortcuts import render
from django.utils import timezone
from django.utils.dateparse import parse_date
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_GET

from visitors.models import Visitor

from . import reports
from .models import CheckIn

DEFAULT_DAYS = 14
NO_KIOSK = "signed-in browser"


def per_day_and_kiosk(first_day: date, last_day: date) -> tuple[list[date], dict[str, list[int]]]:
    """Check-ins per local day (``first_day``..``last_day``) and kiosk: the days, and each kiosk's
    count per day in that order (check-ins made in a signed-in browser, not a kiosk, under NO_KIOSK)."""
    zone = timezone.get_current_timezone()
    start, end = reports.local_day_bounds(first_day, last_day)
    rows = (
        CheckIn.objects.filter(checked_in_at__gte=start, checked_in_at__lt=end)
        .annotate(day=TruncDate("checked_in_at", tzinfo=zone))
        .values("day", "kiosk__name")
        .annotate(count=Count("id"))
        .order_by()
    )
    days = [first_day + timedelta(days=n) for n in range((last_day - first_day).days + 1)]
    position = {day: i for i, day in enumerate(days)}
    counts: dict[str, list[int]] = {}
    for row in rows:
        series = counts.setdefault(row["kiosk__name"] or NO_KIOSK, [0] * len(days))
        series[position[row["day"]]] += row["count"]
    return days, dict(sorted(counts.items()))


def chart_svg(days: list[date], counts: dict[str, list[int]]) -> str:
    """Stacked bars of check-ins per day, one colour per kiosk, as an inline <svg> element."""
    from matplotlib.figure import Figure  # not pyplot: no global state, safe in a threaded server

    figure = Figure(figsize=(9, 3.2), dpi=96, layout="constrained")
    axes = figure.add_subplot()
    positions = range(len(days))
    bottom = [0] * len(days)
    for kiosk, series in counts.items():
        # a kiosk's name is staff's text: "$...$" would be parsed as mathtext (and can raise)
        axes.bar(positions, series, bottom=bottom, label=kiosk.replace("$", r"\$"), width=0.8)
        bottom = [b + n for b, n in zip(bottom, series)]
    step = max(1, len(days) // 14)
    axes.set_xticks(list(positions)[::step], [d.strftime("%d %b") for d in days][::step], rotation=45, ha="right", fontsize=8)
    axes.set_ylabel("check-ins")
    axes.yaxis.get_major_locator().set_params(integer=True)
    axes.spines[["top", "right"]].set_visible(False)
    if counts:
        axes.legend(fontsize=8, frameon=False, loc="upper left")
    else:
        axes.text(0.5, 0.5, "No check-ins in this range", transform=axes.transAxes, ha="center", va="center", color="#666")
        axes.set_ylim(0, 1)
    out = io.StringIO()
    # No metadata block: it names the dublincore/creativecommons vocabularies by URL.
    figure.savefig(out, format="svg", metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
    svg = out.getvalue()
    return svg[svg.index("<svg") :]  # the element only, without the XML prologue and DOCTYPE


def _range(request) -> tuple[date, date, str]:
    """The ``from``/``to`` days asked for (default: the last DEFAULT_DAYS days to today), and a note
    when what was asked could not be used."""
    today = timezone.localdate()
    default = (today - timedelta(days=DEFAULT_DAYS - 1), today)
    asked_first, asked_last = request.GET.get("from", ""), request.GET.get("to", "")
    if not asked_first and not asked_last:
        return *default, ""
    try:
        first = parse_date(asked_first) if asked_first else default[0]
        last = parse_date(asked_last) if asked_last else today
    except ValueError:
        first = last = None
    if first is None or last is None:
        return *default, "Dates are YYYY-MM-DD; showing the last 14 days."
    if last < first:
        return *default, "The range ends before it starts; showing the last 14 days."
    try:
        reports.local_day_bounds(first, last)
    except reports.DayOutOfRange:
        return *default, "Those dates are outside the calendar this site stores; showing the last 14 days."
    if (last - first).days + 1 > settings.REPORT_MAX_DAYS:
        return *default, f"A range covers at most {settings.REPORT_MAX_DAYS} days; showing the last 14 days."
    return first, last, ""


@require_GET
def dashboard(request):
    """Staff only: anybody else signed in is refused (403), anybody signed out is sent to sign in."""
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path(), "admin:login")
    if not (request.user.is_active and request.user.is_staff):
        raise PermissionDenied
    first, last, note = _range(request)
    days, counts = per_day_and_kiosk(first, last)
    today = reports.attendance(timezone.localdate(), timezone.localdate())[0]
    arrivals = sorted(today.present, key=lambda entry: (entry.first_check_in, entry.name))
    context = {
        "title": "Dashboard",
        "first": first,
        "last": last,
        "note": note,
        "chart": mark_safe(chart_svg(days, counts)),  # drawn here from numbers and kiosk names (escaped by matplotlib)
        "total": sum(sum(series) for series in counts.values()),
        "per_kiosk": {kiosk: sum(series) for kiosk, series in counts.items()},
        "today": today,
        "arrivals": arrivals,
        "time_zone": timezone.get_current_timezone_name(),
        "unknown_visitors": unknown_visitors(),  # None shows "—"
    }
    return render(request, "admin/dashboard.html", {**admin.site.each_context(request), **context})


def unknown_visitors() -> int | None:
    """How many unknown visitors are on file; None while the site keeps none (VISITORS_ENABLED off)."""
    if not settings.VISITORS_ENABLED:
        return None
    return Visitor.objects.count()
