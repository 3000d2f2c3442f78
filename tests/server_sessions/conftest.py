"""Machines/sessions tests reuse the control-plane fixtures (scratch Postgres and Redis,
Django on settings.test, Redis flushed per integration test) from tests/server/conftest.py.

pytest imports that conftest under its own module name (``server.conftest``: tests/ is not a
package), so ``import tests.server.conftest`` would load a second copy with a second
stash key — and a second pair of daemons. Take the copy pytest already loaded, if any.
"""

import sys
from pathlib import Path

_THEIRS = Path(__file__).resolve().parent.parent / "server" / "conftest.py"


def _server_conftest():
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and Path(path).resolve() == _THEIRS:
            return module
    import tests.server.conftest as module

    return module


_shared = _server_conftest()
postgres_server = _shared.postgres_server
redis_server = _shared.redis_server
django_db_modify_db_settings = _shared.django_db_modify_db_settings
_fresh_redis = _shared._fresh_redis
