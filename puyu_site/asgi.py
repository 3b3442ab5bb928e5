"""HTTP and websockets in one ASGI application, served by daphne."""
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "puyu_site.settings")
django_asgi_app = get_asgi_application()  # must run before importing consumers (loads the apps)

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from apps.jobs.routing import websocket_urlpatterns  # noqa: E402
from apps.playground.routing import websocket_urlpatterns as playground_websockets  # noqa: E402
from apps.serving.routing import websocket_urlpatterns as serving_websockets  # noqa: E402
from puyu_site.bodylimit import BodyLimitMiddleware, install_daphne_limits  # noqa: E402

# Over-size request bodies are refused while they are read (per-route limits): by daphne's
# request class as Twisted reads them, and by the middleware under any other ASGI server.
install_daphne_limits()

application = ProtocolTypeRouter(
    {
        "http": BodyLimitMiddleware(django_asgi_app),
        # Origin must match ALLOWED_HOSTS (no cross-site websocket hijacking); the session
        # cookie identifies the user; the consumer checks who may see the job.
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(
            websocket_urlpatterns + serving_websockets + playground_websockets))),
    }
)
