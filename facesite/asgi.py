import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "facesite.settings")
# Before TensorFlow loads (see manage.py): its C++ log lines are not actionable for a user.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402  (needs the app registry loaded)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402

from checkin.routing import websocket_urlpatterns  # noqa: E402
from facesite.limits import limit_request_size  # noqa: E402

if settings.FACE_WARMUP:
    from recognition import services  # noqa: E402

    services.pipeline()  # models load and their graphs are traced once, before the first request
    # The gallery snapshot is mapped (or the gallery built) before the first request. In a thread of
    # its own: uvicorn imports this module inside its running event loop, where Django refuses ORM calls.
    import threading  # noqa: E402

    warmup = threading.Thread(target=services.warm_up_gallery, name="gallery-warm-up")
    warmup.start()
    warmup.join()

application = ProtocolTypeRouter(
    {
        # Refuses a body over REQUEST_MAX_BYTES before Django's handler reads it all (facesite/limits.py).
        "http": limit_request_size(django_asgi_app),
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
