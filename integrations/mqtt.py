"""Publishing events to an MQTT broker (MQTT_URL), with a retained availability topic.

Topics follow Home Assistant's conventions where they fit: ``<prefix>/status`` is a retained
availability topic carrying ``online`` / ``offline`` (the broker publishes ``offline`` as our last
will if the connection drops), and each event goes, not retained, to ``<prefix>/<event with dots as
slashes>`` (``facesite/checkin/created``) as the same JSON as a webhook body.

One connection per process, opened on the first publish and kept (paho's network thread reconnects
it); it lives in the django-q worker, where the publish tasks run. A broker outage never raises to
the caller: publish() logs and returns False.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
import uuid
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
from django.conf import settings

log = logging.getLogger(__name__)

ONLINE, OFFLINE = "online", "offline"


def event_topic(prefix: str, event: str) -> str:
    return f"{prefix}/{event.replace('.', '/')}"


def status_topic(prefix: str) -> str:
    return f"{prefix}/status"


class Publisher:
    """A connected paho client for one broker URL and topic prefix."""

    def __init__(self, url: str, prefix: str, timeout: float):
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"MQTT_URL must look like mqtt://host:1883 or mqtts://host:8883, not {url!r}")
        self.host = parts.hostname
        self.port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        self.prefix = prefix.rstrip("/")
        self.timeout = timeout
        self._connected = threading.Event()
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"facesite-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        if parts.username:
            client.username_pw_set(unquote(parts.username), unquote(parts.password) if parts.password else None)
        if parts.scheme == "mqtts":
            client.tls_set()
        client.will_set(status_topic(self.prefix), OFFLINE, qos=1, retain=True)
        client.connect_timeout = timeout
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        self.client = client

    def start(self) -> None:
        """Connect (raises OSError/ConnectionError when the broker cannot be reached in time)."""
        self.client.connect(self.host, self.port, keepalive=60)
        self.client.loop_start()
        if not self._connected.wait(self.timeout):
            self.client.loop_stop()
            self.client.disconnect()
            raise ConnectionError(f"no CONNACK from {self.host}:{self.port} within {self.timeout} s")

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            log.warning("MQTT broker %s:%s refused the connection: %s", self.host, self.port, reason_code)
            return
        # On every (re)connection: the will may have marked us offline meanwhile.
        client.publish(status_topic(self.prefix), ONLINE, qos=1, retain=True)
        self._connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self._connected.clear()

    def publish(self, event: str, message: dict) -> bool:
        info = self.client.publish(event_topic(self.prefix, event), json.dumps(message), qos=1)
        info.wait_for_publish(self.timeout)
        return info.is_published()

    def stop(self) -> None:
        """Say offline (retained), then disconnect cleanly (a clean disconnect does not fire the will)."""
        try:
            if self._connected.is_set():
                self.client.publish(status_topic(self.prefix), OFFLINE, qos=1, retain=True).wait_for_publish(self.timeout)
        except (RuntimeError, ValueError) as err:
            log.warning("MQTT: could not publish offline: %s", err)
        finally:
            self.client.disconnect()
            self.client.loop_stop()


_publishers: dict[tuple[str, str], Publisher] = {}
_lock = threading.Lock()


def publisher() -> Publisher | None:
    """This process's publisher for the current settings, connected; None when MQTT_URL is unset."""
    url = settings.MQTT_URL
    if not url:
        return None
    key = (url, settings.MQTT_TOPIC_PREFIX)
    with _lock:
        current = _publishers.get(key)
        if current is None:
            current = Publisher(url, settings.MQTT_TOPIC_PREFIX, settings.MQTT_TIMEOUT_SECONDS)
            current.start()
            _publishers[key] = current
        return current


def publish(event: str, message: dict) -> bool:
    """Publish one event; False (logged) when MQTT is off or the broker is unreachable."""
    try:
        target = publisher()
        if target is None:
            return False
        if target.publish(event, message):
            return True
        log.warning("MQTT: %s was not acknowledged by the broker within %s s", event, target.timeout)
    except Exception as err:  # an outage must never fail the caller
        log.warning("MQTT: could not publish %s: %s", event, err)
    return False


def announce_online() -> bool:
    """Say ``online`` again (retained). Run every minute by the worker: when a django-q worker is
    recycled its connection drops without a goodbye, the broker publishes the ``offline`` will, and
    this puts the status right within a minute while the site is up."""
    try:
        target = publisher()
        if target is None:
            return False
        info = target.client.publish(status_topic(target.prefix), ONLINE, qos=1, retain=True)
        info.wait_for_publish(target.timeout)
        return info.is_published()
    except Exception as err:
        log.warning("MQTT: could not announce online: %s", err)
    return False


@atexit.register
def stop_all() -> None:
    with _lock:
        while _publishers:
            _, current = _publishers.popitem()
            current.stop()
