"""Machines: join tokens, enrollment, per-machine credentials, heartbeats (issue 5 item 1)."""
