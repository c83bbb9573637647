"""Websocket routes, mounted by facesite/asgi.py behind origin checking and session auth."""

from django.urls import path

from .consumers import CheckInFeedConsumer, IdentifyConsumer

websocket_urlpatterns = [
    path("ws/identify/", IdentifyConsumer.as_asgi()),
    path("ws/checkins/", CheckInFeedConsumer.as_asgi()),
]
