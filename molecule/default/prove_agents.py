"""molecule verify: each agent (by its host name) is online in the control plane and runs
`uname -a` in a terminal session through the user API. The API key comes on stdin (as
`issue_api_key` printed it on the control plane) and is revoked at the end.

Usage: prove_agents.py ADDRESS SITE_DIR HOSTNAME... < key
"""

import sys
from pathlib import Path

from cmdop_install import manage
from cmdop_install.site import load_site
from cmdop_install.site_api import SiteApi


def main() -> None:
    address, site_dir, *hostnames = sys.argv[1:]
    site = load_site(Path(site_dir))
    key_id, key = manage.parse_api_key(sys.stdin.read())
    api = SiteApi(address, site["site"]["domain"], Path(site_dir) / "pki" / "ca.crt", key,
                  site["site"]["name"])
    try:
        machines = api.wait_online([manage.machine_key(h) for h in hostnames], timeout=120)
        for hostname in hostnames:
            machine = machines[manage.machine_key(hostname)]
            line = api.run_in_session(machine["machine_id"], "uname -a", b"Linux")
            print(f"{hostname}: {line.decode(errors='replace')}")
    finally:
        api.call("DELETE", f"/api-keys/{key_id}")


if __name__ == "__main__":
    main()
