"""The site's root: each kind of visitor lands on their own page."""

from django.shortcuts import redirect


def home(request):
    """Staff go to the admin; everybody else (kiosks, signed-in users, visitors) to the check-in
    page, which offers the kiosk token form and the sign-in link to those without a session."""
    return redirect("admin:index" if request.user.is_staff else "checkin")
