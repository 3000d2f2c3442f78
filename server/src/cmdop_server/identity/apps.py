from django.apps import AppConfig


class IdentityConfig(AppConfig):
    name = "cmdop_server.identity"
    label = "identity"
    default_auto_field = "django.db.models.BigAutoField"
