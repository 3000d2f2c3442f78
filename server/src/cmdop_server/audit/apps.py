from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "cmdop_server.audit"
    label = "audit"
    default_auto_field = "django.db.models.BigAutoField"
