"""Retention without DELETE rights: the app's role may only INSERT/SELECT audit rows, so
old rows are purged by ``audit_purge()``, a SECURITY DEFINER function owned by the role
that runs migrations. It deletes only rows older than ``audit_retention.days``, a value
the app's role can read but not change (the installer sets it: ``audit_grants``)."""

from django.db import migrations

CREATE = """
CREATE TABLE audit_retention (
    id integer PRIMARY KEY CHECK (id = 1),
    days integer NOT NULL CHECK (days >= 1)
);
INSERT INTO audit_retention (id, days) VALUES (1, 90);
CREATE FUNCTION audit_purge() RETURNS bigint
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH gone AS (
        DELETE FROM public.audit_auditevent
        WHERE occurred_at < now() - make_interval(
            days => (SELECT days FROM public.audit_retention WHERE id = 1))
        RETURNING 1)
    SELECT count(*) FROM gone
$$;
REVOKE ALL ON FUNCTION audit_purge() FROM PUBLIC;
"""

DROP = "DROP FUNCTION audit_purge(); DROP TABLE audit_retention;"


class Migration(migrations.Migration):
    dependencies = [("audit", "0002_chain")]
    operations = [migrations.RunSQL(CREATE, DROP)]
