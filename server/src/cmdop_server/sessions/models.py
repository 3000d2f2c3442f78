"""A terminal session on one machine and the people in it, each OPERATOR or OBSERVER."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from cmdop_server.tenancy import WorkspaceOwned


class Status(models.TextChoices):
    PENDING = "pending"  # asked for; the agent has not opened the PTY yet
    CONNECTED = "connected"  # PTY open, agent online
    BACKGROUND = "background"  # PTY open, nobody attached (still usable)
    DISCONNECTED = "disconnected"  # the agent restarted or stopped heart-beating
    CLOSED = "closed"  # ended by a participant or by the shell exiting


# The seed's check 2: only these statuses may be accessed.
ACTIVE_STATUSES = frozenset({Status.CONNECTED, Status.BACKGROUND})
# Statuses a session can still leave by itself (agent events, heartbeats).
OPEN_STATUSES = frozenset({Status.PENDING, Status.CONNECTED, Status.BACKGROUND})


class SessionRole(models.TextChoices):
    OPERATOR = "operator"
    OBSERVER = "observer"


class Session(WorkspaceOwned):
    public_id = models.CharField(max_length=40, unique=True)
    machine = models.ForeignKey("machines.Machine", on_delete=models.CASCADE,
                                related_name="sessions")
    created_by = models.ForeignKey("identity.User", null=True, on_delete=models.SET_NULL)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    boot_id = models.CharField(max_length=64, blank=True)
    pid = models.PositiveIntegerField(null=True, blank=True)
    cols = models.PositiveSmallIntegerField(default=80)
    rows = models.PositiveSmallIntegerField(default=24)
    exit_code = models.IntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.public_id


class Participant(models.Model):
    session = models.ForeignKey(Session, on_delete=models.CASCADE, related_name="participants")
    user = models.ForeignKey("identity.User", on_delete=models.CASCADE)
    role = models.CharField(max_length=16, choices=SessionRole.choices)
    added_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["session", "user"], name="one_role_per_participant"),
        ]
