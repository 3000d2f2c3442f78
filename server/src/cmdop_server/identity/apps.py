from django.apps import AppConfig


class IdentityConfig(AppConfig):
    name = "cmdop_server.identity"
    label = "identity"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # checks registers cmdop.W00x; dbconn closes each ASGI request's connections
        from cmdop_server import checks, dbconn  # noqa: F401

        dbconn.connect()
