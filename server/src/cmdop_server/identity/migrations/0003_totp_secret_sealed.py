"""TOTP secrets sealed at rest (cmdop_server.sealing): the column widens to hold a sealed
value, then every secret still in clear is sealed in place with the site's ``totp_key``.

Expand-safe: the release deployed sites run (server/PREVIOUS_RELEASE, 416222f) has no second
factor, so no code that reads this table in clear serves while it runs; widening a varchar is
a catalogue change in PostgreSQL (no table rewrite, no lock held for long). Reversible: the
way back opens every sealed secret again.
"""

from django.conf import settings
from django.db import migrations, models

from cmdop_server import sealing


def seal_clear_secrets(apps, schema_editor):
    TotpDevice = apps.get_model("identity", "TotpDevice")
    for device in TotpDevice.objects.using(schema_editor.connection.alias).exclude(
            secret__startswith=sealing.PREFIX).only("pk", "secret"):
        device.secret = sealing.seal(device.secret, settings.CMDOP_TOTP_KEYS)
        device.save(update_fields=["secret"])


def open_sealed_secrets(apps, schema_editor):
    TotpDevice = apps.get_model("identity", "TotpDevice")
    for device in TotpDevice.objects.using(schema_editor.connection.alias).filter(
            secret__startswith=sealing.PREFIX).only("pk", "secret"):
        device.secret = sealing.unseal(device.secret, settings.CMDOP_TOTP_KEYS)
        device.save(update_fields=["secret"])


class Migration(migrations.Migration):
    dependencies = [
        ("identity", "0002_second_factor"),
    ]

    operations = [
        migrations.AlterField(
            model_name="totpdevice",
            name="secret",
            field=models.CharField(max_length=255),
        ),
        migrations.RunPython(seal_clear_secrets, open_sealed_secrets),
    ]
