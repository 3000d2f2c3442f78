from django.apps import AppConfig


class CmdopServerConfig(AppConfig):
    """The project package as an app: system checks, management commands, templates."""

    name = "cmdop_server"
    label = "cmdop"

    def ready(self) -> None:
        from cmdop_server import checks  # noqa: F401  (registers cmdop.W00x)
