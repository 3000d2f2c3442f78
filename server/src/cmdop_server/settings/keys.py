"""Refuse weak signing keys at start-up (the same rule as Django's security.W009)."""

from django.core.exceptions import ImproperlyConfigured

MIN_LENGTH = 50
MIN_UNIQUE_CHARACTERS = 5


def require_strong_key(name: str, key: str) -> str:
    if (
        len(key) < MIN_LENGTH
        or len(set(key)) < MIN_UNIQUE_CHARACTERS
        or key.startswith("django-insecure-")
    ):
        raise ImproperlyConfigured(
            f"{name} is weak: it needs at least {MIN_LENGTH} characters, "
            f"{MIN_UNIQUE_CHARACTERS} distinct ones, and no 'django-insecure-' prefix"
        )
    return key
