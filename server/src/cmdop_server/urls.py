from django.urls import include, path

from cmdop_server import metrics
from cmdop_server.agent_api.api import api as agent_api
from cmdop_server.api.main import api
from cmdop_server.web import console, second_factor, views

urlpatterns = [
    path("", console.home, name="home"),
    path("api/v1/", api.urls),
    path("api/agent/v1/", agent_api.urls),
    path("login/", views.login, name="login"),
    path("login/2fa/", second_factor.sign_in_second_step, name="login-2fa"),
    path("account/2fa/", second_factor.account, name="two-factor"),
    path("account/2fa/workspaces/<slug:slug>/", second_factor.workspace_rule,
         name="workspace-2fa"),
    path("logout/", views.logout, name="logout"),
    path("device/", views.device, name="device"),
    path("device/decide/", views.device_decide, name="device-decide"),
    path("tokens/", views.tokens, name="tokens"),
    path("tokens/<int:family_id>/revoke/", views.revoke_family, name="revoke-family"),
    path("keys/", console.create_api_key, name="create-api-key"),
    path("keys/<slug:slug>/<int:key_id>/revoke/", views.revoke_api_key, name="revoke-key"),
    path("healthz", views.healthz, name="healthz"),
    path("metrics", metrics.view, name="metrics"),
    path("assets/<path:name>", views.asset, name="asset"),
    path("w/<slug:slug>/", include("cmdop_server.machines.pages")),
    path("w/<slug:slug>/", include("cmdop_server.sessions.pages")),
    path("w/<slug:slug>/", include("cmdop_server.audit.pages")),
]

handler500 = "cmdop_server.web.views.server_error"
