import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cmdop_server.settings.production")
application = get_asgi_application()

from cmdop_server.agent_api.asgi import route_agent_api, tune_collector  # noqa: E402

application = route_agent_api(application)  # agent calls skip the browser middleware

from cmdop_server.sessions.terminal import route_terminal  # noqa: E402

application = route_terminal(application)  # the browser terminal's WebSocket

from cmdop_server import metrics  # noqa: E402

application = metrics.instrument(application)  # every HTTP request counted and timed

from cmdop_server.redis_client import warmed_at_start  # noqa: E402

application = warmed_at_start(application)  # Redis connections open before the first request

tune_collector()  # last: the app loaded is frozen out of the collector's passes
