"""HTTP and websockets in one ASGI application, served by daphne."""
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "puyu_site.settings")
django_asgi_app = get_asgi_application()  # must run before importing consumers (loads the apps)

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from apps.jobs.routing import websocket_urlpatterns  # noqa: E402
from apps.serving.routing import websocket_urlpatterns as serving_websockets  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # Origin must match ALLOWED_HOSTS (no cross-site websocket hijacking); the session
        # cookie identifies the user; the consumer checks who may see the job.
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns + serving_websockets))),
    }
)
