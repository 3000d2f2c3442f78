"""Machines/sessions tests reuse the control-plane fixtures (scratch Postgres and Redis,
Django on settings.test, Redis flushed per integration test) from tests/server/conftest.py.

pytest imports that conftest under its own module name (``server.conftest``: tests/ is not a
package), so ``import tests.server.conftest`` would load a second copy of it (which shares
its daemons with the first through tests/support/stash.py). Take the copy pytest already
loaded, if any.
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


# ---- the real control plane and the real agent (test_real_agent*.py) ------------------------
import pytest  # noqa: E402

from tests.support.control_plane import ControlPlane, make_pki  # noqa: E402


@pytest.fixture(scope="session")
def tls_pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("control-plane-pki"))


@pytest.fixture(scope="session")
def control_plane(tls_pki, django_db_setup, django_db_modify_db_settings, tmp_path_factory):
    """One gunicorn (asgi worker, TLS) for every test that does not kill it."""
    log = tmp_path_factory.mktemp("control-plane") / "gunicorn.log"
    with ControlPlane(tls_pki, log) as cp:
        yield cp


@pytest.fixture
def own_control_plane(tls_pki, django_db_setup, django_db_modify_db_settings, tmp_path):
    """A gunicorn of this test's own, for tests that kill and restart it."""
    with ControlPlane(tls_pki, tmp_path / "gunicorn.log") as cp:
        yield cp


@pytest.fixture
def real_agent(request, tmp_path):
    """A factory: ``real_agent(control_plane, config_extra="")`` -> an enrolled-on-start
    RealAgent in a fresh workspace, stopped (SIGTERM) at teardown."""
    from tests.server_sessions.real_agent import RealAgent

    made = []

    def make(cp, config_extra: str = "") -> RealAgent:
        agent = RealAgent(cp.url, cp.pki.ca, tmp_path / f"agent{len(made)}", config_extra)
        made.append(agent)
        return agent

    yield make
    for agent in made:
        agent.close()
