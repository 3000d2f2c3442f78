"""The lab: a local, disposable fleet of Debian 12 systemd+sshd hosts (podman)."""
