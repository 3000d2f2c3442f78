#!/usr/bin/env bash
# Installs everything the demo and the tests need on a Debian 12 machine:
# Debian packages (only the missing ones), uv, and the workspace venv from uv.lock.
set -euo pipefail
cd "$(dirname "$0")/.."
# uv trusts the machine's certificate store, as apt and pip do (a registry reached through a
# TLS-inspecting proxy is signed by a CA only that store has; uv's built-in roots refuse it)
export UV_NATIVE_TLS="${UV_NATIVE_TLS:-1}"

PACKAGES=(
  podman runc debootstrap iptables iproute2 openssh-client   # the lab
  # podman's netavark backend, pinned in the lab's containers.conf: only recommends of podman,
  # so --no-install-recommends leaves them out, and podman's CNI fallback gives an --internal
  # network no address on the bridge (an air-gapped host is then unreachable from here).
  netavark aardvark-dns
  python3-venv                                                # the workspace venv
  postgresql redis-server nginx openssl                       # integration tier: real servers
  chromium chromium-driver                                    # the verification page, headless
  systemd                                                     # systemd-analyze security for our units
  tmux                                                        # drives `cmdop connect` in a real terminal (tests)
  dpkg-dev                                                    # dpkg-scanpackages: the offline bundle's apt index
  prometheus                                                  # promtool: checks and unit-tests docs/alerts.yml
)
# npm ci fetches xterm.js for the server wheel (server/package-lock.json). Machines that already
# carry a Node.js with npm (e.g. NodeSource's nodejs, which bundles npm and conflicts with
# Debian's npm package) keep it; elsewhere Debian's nodejs and npm are installed.
command -v npm >/dev/null 2>&1 || PACKAGES+=(nodejs npm)

if [ ! -r /etc/debian_version ]; then
  echo "bootstrap: this is not Debian; install by hand: ${PACKAGES[*]} and python3.11 with venv" >&2
  exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  [[ "$p" == \#* ]] && continue
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "bootstrap: missing Debian packages: ${missing[*]} (run as root or: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "bootstrap: installing ${missing[*]}"
  # Keep postinst scripts from starting system daemons: the tests start their own on scratch ports.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
  # prometheus is here for promtool only: its postinst enables the daemon for the next boot
  if [[ " ${missing[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null; then
    systemctl disable prometheus.service >/dev/null 2>&1 || true
  fi
fi

# uv (one lock file for the workspace); from PyPI into a private venv if the machine has none.
UV=$(command -v uv || true)
if [ -z "$UV" ]; then
  if [ ! -x .cache/uv/bin/uv ]; then
    python3 -m venv .cache/uv && .cache/uv/bin/pip install -q uv
  fi
  UV=.cache/uv/bin/uv
fi
# xterm.js and its addons at the versions and hashes of server/package-lock.json; the
# cmdop-server build (server/hatch_build.py) copies them into the package, so reinstall it
(cd server && npm ci --ignore-scripts --no-audit --no-fund --silent)
"$UV" sync --all-packages --frozen -q --reinstall-package cmdop-server
