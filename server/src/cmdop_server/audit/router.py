"""Audit rows live in their own database ("audit"), everything else in "default"."""

AUDIT_DB = "audit"
AUDIT_APP = "audit"


class AuditRouter:
    def db_for_read(self, model, **hints):
        return AUDIT_DB if model._meta.app_label == AUDIT_APP else "default"

    db_for_write = db_for_read

    def allow_relation(self, obj1, obj2, **hints):
        return (obj1._meta.app_label == AUDIT_APP) == (obj2._meta.app_label == AUDIT_APP)

    def allow_migrate(self, db, app_label, model_name=None, **hints):
        return (app_label == AUDIT_APP) == (db == AUDIT_DB)
