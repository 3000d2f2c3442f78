"""Text a request may carry: every request schema derives from ``Input``, so a string the
database cannot store is a 400 naming its field, never a DataError (500) at the first query.

PostgreSQL text cannot hold NUL, and UTF-8 cannot encode a lone surrogate (JSON's
``"\\ud800"`` decodes to one); both are refused in every string, at any depth of a field.
"""

from __future__ import annotations

import re
from typing import Any

from ninja import Schema
from pydantic import ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def problem(value: Any) -> str | None:
    """Why ``value`` (a string, or lists/dicts of them) cannot be stored, or None."""
    if isinstance(value, str):
        found = _UNSTORABLE.search(value)
        if found is None:
            return None
        return "contains NUL" if found.group() == "\x00" else "is not valid Unicode text"
    if isinstance(value, dict):
        value = [*value.keys(), *value.values()]
    if isinstance(value, list | tuple):
        for item in value:
            why = problem(item)
            if why:
                return why
    return None


class Input(Schema):
    """Base of request bodies, queries and forms."""

    # after: a nested schema has checked its own fields by then and named the deepest one
    @field_validator("*", mode="after")
    @classmethod
    def _storable_text(cls, value: Any, info: ValidationInfo) -> Any:
        why = problem(value)
        if why:
            raise PydanticCustomError("unstorable_text", "{field} {why}",
                                      {"field": info.field_name, "why": why})
        return value
