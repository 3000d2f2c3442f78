from django.apps import AppConfig


class SessionsConfig(AppConfig):
    name = "cmdop_server.sessions"
    label = "cmdop_sessions"  # "sessions" is django.contrib.sessions
    default_auto_field = "django.db.models.BigAutoField"
