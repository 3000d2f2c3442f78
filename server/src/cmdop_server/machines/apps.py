from django.apps import AppConfig


class MachinesConfig(AppConfig):
    name = "cmdop_server.machines"
    label = "machines"
    default_auto_field = "django.db.models.BigAutoField"
