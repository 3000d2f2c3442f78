"""``cmdop-server``: Django's manage.py for control-plane hosts.

``cmdop-server migrate`` etc. use the production settings (files under /etc/cmdop, see
docs/server-config.md). ``cmdop-server --dev <command>`` selects the dev settings instead,
and ``cmdop-server --dev serve`` runs the self-signed HTTPS dev endpoint (devserver.py);
there is no other way to leave production mode.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv if argv is None else argv)
    if len(args) > 1 and args[1] == "--dev":
        del args[1]
        os.environ["DJANGO_SETTINGS_MODULE"] = "cmdop_server.settings.dev"
        if len(args) > 1 and args[1] == "serve":
            from cmdop_server.devserver import serve

            serve(args[2:])
            return
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cmdop_server.settings.production")
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        settings.INSTALLED_APPS  # noqa: B018 - load the settings module now
    except ImproperlyConfigured as exc:
        # one line, no traceback: the operator fixes the named file and retries
        sys.exit(f"cmdop-server: refusing to start: {exc}")
    execute_from_command_line(args)


if __name__ == "__main__":
    main()
