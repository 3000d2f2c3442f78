"""TOTP secrets are sealed at rest with the site's ``totp_key`` (cmdop_server.sealing), not
with SECRET_KEY: the database holds no secret in clear, a rotation of the Django key leaves
every code working, and identity migration 0003 seals the rows an earlier commit wrote in
clear (and opens them again on the way back). Real Postgres."""

from __future__ import annotations

import time

import pyotp
import pytest
from cmdop_server import sealing
from cmdop_server.identity import totp
from cmdop_server.identity.models import TotpDevice
from django.conf import settings
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test import override_settings

from tests.server.helpers import make_user

SEALED_AT = [("identity", "0003_totp_secret_sealed")]
CLEAR_AT = [("identity", "0002_second_factor")]
OTHER_KEY = "another-site-totp-" + "Zt7wP4kN" * 6


def _stored(user) -> str:
    """The column as a dump of the database holds it."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT secret FROM identity_totpdevice WHERE user_id = %s", [user.pk])
        return cursor.fetchone()[0]


def _enrolled(user) -> str:
    """``user`` with TOTP on, through the actions; the secret in clear."""
    device = totp.do_start_enrolment(user, "203.0.113.9")
    clear = totp.secret_of(device)
    step = int(time.time()) // 30
    assert totp.do_confirm_enrolment(user, pyotp.TOTP(clear).at(step * 30 - 30), "203.0.113.9")
    return clear


@pytest.mark.unit
def test_a_sealed_value_opens_with_its_key_only() -> None:
    keys = ["k1-" + "Lp3sD9fG" * 7]
    sealed = sealing.seal("JBSWY3DPEHPK3PXP", keys)
    assert sealed.startswith(sealing.PREFIX) and "JBSWY3DPEHPK3PXP" not in sealed
    assert sealing.seal("JBSWY3DPEHPK3PXP", keys) != sealed  # a fresh IV each time
    assert sealing.unseal(sealed, keys) == "JBSWY3DPEHPK3PXP"
    # a new key put first: the old one still opens what it sealed, the new one seals
    assert sealing.unseal(sealed, [OTHER_KEY, *keys]) == "JBSWY3DPEHPK3PXP"
    with pytest.raises(sealing.SealError, match="does not open") as refused:
        sealing.unseal(sealed, [OTHER_KEY])
    assert "JBSWY3DPEHPK3PXP" not in str(refused.value)
    tampered = sealed[:-6] + ("A" if sealed[-6] != "A" else "B") + sealed[-5:]
    with pytest.raises(sealing.SealError):
        sealing.unseal(tampered, keys)
    with pytest.raises(sealing.SealError, match="not sealed"):
        sealing.unseal("JBSWY3DPEHPK3PXP", keys)
    with pytest.raises(sealing.SealError, match="no totp_key"):
        sealing.seal("JBSWY3DPEHPK3PXP", [])


@pytest.mark.integration
@pytest.mark.django_db(databases=["default", "audit"])
def test_the_database_holds_no_clear_secret_and_secret_key_rotation_keeps_codes_working():
    user = make_user()
    clear = _enrolled(user)
    stored = _stored(user)
    assert stored.startswith(sealing.PREFIX) and clear not in stored
    assert sealing.unseal(stored, settings.CMDOP_TOTP_KEYS) == clear
    code = pyotp.TOTP(clear).now()
    # the Django key rotated (new key, the old one a fallback) and then the fallback dropped
    with override_settings(SECRET_KEY="rotated-" + "Vb6xJ1qS" * 7, SECRET_KEY_FALLBACKS=[]):
        assert totp.do_verify(user, code, "sign_in", "203.0.113.9")
    # another totp_key (the credential replaced, not rotated): refused loudly, never a match
    with override_settings(CMDOP_TOTP_KEYS=[OTHER_KEY]), pytest.raises(sealing.SealError):
        totp.do_verify(user, pyotp.TOTP(clear).now(), "sign_in", "203.0.113.9")


@pytest.mark.integration
@pytest.mark.django_db(databases=["default", "audit"], transaction=True)
def test_the_migration_seals_clear_rows_and_opens_them_on_the_way_back():
    """Rows written in clear by a commit before 0003 (the schema at 0002) are sealed by it;
    migrating back to 0002 leaves them in clear again, and forward seals them once more."""
    sealed_user, clear_user = make_user(), make_user()
    clear = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
    executor = MigrationExecutor(connection)
    try:
        executor.migrate(CLEAR_AT)
        old = MigrationExecutor(connection).loader.project_state(CLEAR_AT).apps
        Device = old.get_model("identity", "TotpDevice")
        Device.objects.create(user_id=clear_user.pk, secret=clear, last_step=0)
        assert _stored(clear_user) == clear

        MigrationExecutor(connection).migrate(SEALED_AT)
        stored = _stored(clear_user)
        assert stored.startswith(sealing.PREFIX) and clear not in stored
        assert totp.secret_of(TotpDevice.objects.get(user=clear_user)) == clear
        # a device enrolled after the migration is sealed once, not twice
        _enrolled(sealed_user)
        before = _stored(sealed_user)

        MigrationExecutor(connection).migrate(CLEAR_AT)
        assert _stored(clear_user) == clear
        reopened = _stored(sealed_user)
        assert not reopened.startswith(sealing.PREFIX)
        MigrationExecutor(connection).migrate(SEALED_AT)
        assert sealing.unseal(_stored(sealed_user)) == reopened
        assert sealing.unseal(before) == reopened
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())
