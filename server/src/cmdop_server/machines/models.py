"""Join tokens, machines and the per-boot event cursor of the agent protocol.

Join tokens and machine credentials are stored as SHA-256 digests only (see ``tokens.py``
for how they are made and their entropy); the clear value exists in one HTTP response.
"""

from __future__ import annotations

from datetime import timedelta

from django.db import models
from django.utils import timezone

from cmdop_server.tenancy import WorkspaceOwned

# A machine is offline once three heartbeats in a row are missing (docs/agent-protocol.md).
MISSED_HEARTBEATS_OFFLINE = 3


class JoinToken(WorkspaceOwned):
    name = models.CharField(max_length=100, blank=True)
    token_hash = models.CharField(max_length=64, unique=True)
    created_by = models.ForeignKey("identity.User", null=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    usage_limit = models.PositiveIntegerField(default=1)
    uses = models.PositiveIntegerField(default=0)
    revoked_at = models.DateTimeField(null=True, blank=True)


class Machine(WorkspaceOwned):
    class Enrollment(models.TextChoices):
        JOIN_TOKEN = "join_token"  # noqa: S105 - an enrollment kind
        DEVICE_FLOW = "device_flow"

    public_id = models.CharField(max_length=40, unique=True)
    hostname = models.CharField(max_length=253)
    os = models.CharField(max_length=200, blank=True)
    agent_version = models.CharField(max_length=40, blank=True)
    enrollment = models.CharField(max_length=16, choices=Enrollment.choices)
    # join-token machines authenticate with their own credential ...
    credential_hash = models.CharField(max_length=64, unique=True, null=True, blank=True)
    credential_rotated_at = models.DateTimeField(null=True, blank=True)
    # A handover (actions.do_open_credential_handovers): until ``credential_handover_until``
    # the agent gets a new credential on its heartbeat (``pending``); the first request made
    # with it makes it current, and the old one becomes ``previous``: refused, and kept only
    # so that a replay of it is audited as such. Past the deadline unconfirmed, the current
    # one is refused too: the machine needs a new credential from an Admin.
    pending_credential_hash = models.CharField(max_length=64, unique=True, null=True,
                                               blank=True)
    previous_credential_hash = models.CharField(max_length=64, null=True, blank=True,
                                                db_index=True)
    credential_handover_until = models.DateTimeField(null=True, blank=True)
    # ... device-flow machines with the OAuth tokens of the family that enrolled them
    token_family = models.OneToOneField("identity.TokenFamily", null=True, blank=True,
                                        on_delete=models.SET_NULL, related_name="machine")
    enrolled_by = models.ForeignKey("identity.User", null=True, blank=True,
                                    on_delete=models.SET_NULL)
    join_token = models.ForeignKey(JoinToken, null=True, blank=True, on_delete=models.SET_NULL)
    enrolled_at = models.DateTimeField(default=timezone.now)
    heartbeat_interval = models.PositiveIntegerField(default=30)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    boot_id = models.CharField(max_length=64, blank=True)
    disabled_at = models.DateTimeField(null=True, blank=True)

    class Meta(WorkspaceOwned.Meta):
        constraints = [
            models.UniqueConstraint(fields=["workspace", "hostname"],
                                    name="machine_hostname_unique_per_workspace"),
        ]

    def __str__(self) -> str:
        return self.hostname

    @property
    def online(self) -> bool:
        if self.last_seen_at is None or self.disabled_at is not None:
            return False
        grace = timedelta(seconds=self.heartbeat_interval * MISSED_HEARTBEATS_OFFLINE)
        return timezone.now() - self.last_seen_at <= grace


class AgentBoot(models.Model):
    """The highest event ``seq`` accepted per (machine, boot_id): retried batches are no-ops."""

    machine = models.ForeignKey(Machine, on_delete=models.CASCADE, related_name="boots")
    boot_id = models.CharField(max_length=64)
    accepted_through = models.PositiveBigIntegerField(default=0)
    started_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["machine", "boot_id"], name="one_cursor_per_boot"),
        ]
