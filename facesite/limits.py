"""Oversized requests are refused before anything reads their body.

Two guards share one rule (a declared Content-Length above REQUEST_MAX_BYTES gets 413):

- `RequestSizeLimitMiddleware`, first in MIDDLEWARE, for the WSGI path (and the test client), where
  Django reads a body only when a view asks for it;
- `limit_request_size(app)`, around the ASGI application (facesite/asgi.py): Django's ASGI handler
  reads the whole body into a spooled file before any middleware runs, so a 300 MB upload to a route
  that does not exist would be read in full. This wrapper answers from the headers alone, and a body
  sent without a Content-Length (chunked) is cut off as soon as it passes the limit.

The limits Django applies later, while a view parses the body (DATA_UPLOAD_MAX_MEMORY_SIZE,
DATA_UPLOAD_MAX_NUMBER_FIELDS, DATA_UPLOAD_MAX_NUMBER_FILES), become 413/400 in the API's error shape
in facesite/api.py (`request_limit_error`).
"""

from __future__ import annotations

import json

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

TOO_LARGE_CODE = "request_too_large"


def too_large_message(limit: int) -> str:
    return f"The request body is larger than the {limit:,} bytes this server accepts."


def _is_api(path: str) -> bool:
    return path.startswith("/api/")


def declared_too_large(content_length: str | bytes | None, limit: int) -> bool:
    if not content_length:
        return False
    try:
        return int(content_length) > limit
    except ValueError:
        return False  # Django and the server refuse a malformed length themselves


def too_large_response(path: str) -> HttpResponse:
    limit = settings.REQUEST_MAX_BYTES
    message = too_large_message(limit)
    if _is_api(path):
        response = JsonResponse({"error": {"code": TOO_LARGE_CODE, "message": message}}, status=413)
    else:
        response = HttpResponse(message, status=413, content_type="text/plain; charset=utf-8")
    # The body was not read: the connection cannot carry another request.
    response["Connection"] = "close"
    return response


class RequestSizeLimitMiddleware:
    # Both, so that under ASGI this first middleware does not switch the whole chain to sync mode.
    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest):
        if iscoroutinefunction(self):
            return self.__acall__(request)
        if declared_too_large(request.META.get("CONTENT_LENGTH"), settings.REQUEST_MAX_BYTES):
            return too_large_response(request.path)
        return self.get_response(request)

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        if declared_too_large(request.META.get("CONTENT_LENGTH"), settings.REQUEST_MAX_BYTES):
            return too_large_response(request.path)
        return await self.get_response(request)


def limit_request_size(app):
    """Wrap an ASGI application: HTTP requests whose body passes REQUEST_MAX_BYTES get a 413."""

    async def guarded(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        limit = settings.REQUEST_MAX_BYTES
        headers = dict(scope.get("headers") or [])
        if declared_too_large(headers.get(b"content-length"), limit):
            return await _send_too_large(scope, send)

        received = 0
        over = False
        started = False

        async def counting_receive():
            nonlocal received, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Django's handler takes this as the client going away and stops reading.
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await app(scope, counting_receive, tracking_send)
        if over and not started:
            await _send_too_large(scope, send)

    return guarded


async def _send_too_large(scope, send) -> None:
    message = too_large_message(settings.REQUEST_MAX_BYTES)
    if _is_api(scope.get("path", "")):
        body, content_type = json.dumps({"error": {"code": TOO_LARGE_CODE, "message": message}}).encode(), b"application/json"
    else:
        body, content_type = message.encode(), b"text/plain; charset=utf-8"
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
