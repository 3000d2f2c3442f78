from django.db import models
from django.utils import timezone


class AuditEvent(models.Model):
    """One security-relevant event. Lives in the audit database: no FKs into the app DB,
    so ids and a readable label are copied in (the row outlives the user it names)."""

    occurred_at = models.DateTimeField(default=timezone.now, db_index=True)
    event = models.CharField(max_length=64, db_index=True)
    success = models.BooleanField()
    workspace_id = models.BigIntegerField(null=True, db_index=True)
    user_id = models.BigIntegerField(null=True)
    user_label = models.CharField(max_length=200, blank=True)
    method = models.CharField(max_length=32, blank=True)
    ip = models.GenericIPAddressField(null=True)
    reason = models.CharField(max_length=200, blank=True)
    data = models.JSONField(default=dict)
    # the hash chain per workspace (audit/chain.py); filled by audit.record()
    prev_hash = models.CharField(max_length=64, default="")
    row_hash = models.CharField(max_length=64, default="")

    class Meta:
        indexes = [models.Index(fields=["workspace_id", "id"], name="audit_chain_order")]
