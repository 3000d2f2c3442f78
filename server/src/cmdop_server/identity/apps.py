from django.apps import AppConfig


class IdentityConfig(AppConfig):
    name = "cmdop_server.identity"
    label = "identity"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from cmdop_server import checks  # noqa: F401  (registers cmdop.W00x)
