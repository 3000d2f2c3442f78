"""pytest stash keys for conftest files that pytest may load twice under two module names
(tests/server/conftest.py is imported by tests/server_sessions/conftest.py as
``tests.server.conftest`` when that one is collected first, and again by pytest as its own):
a key defined in the conftest itself would differ between the copies, and the second copy
would start a second Postgres and Redis that Django's test databases were never made on."""

from __future__ import annotations

import pytest

SERVICES = pytest.StashKey[tuple]()
