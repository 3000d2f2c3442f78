-- managed by cmdop-install, do not edit (site golden)
-- The app's roles: one NOLOGIN owner of every object and two LOGIN roles that act as it.
-- Rotation sets a password on the idle one, switches the app, then PASSWORD NULLs the old
-- one. Passwords are never here: the installer sends SCRAM verifiers separately.
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cmdop_owner') THEN
    CREATE ROLE cmdop_owner NOLOGIN;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cmdop_blue') THEN
    CREATE ROLE cmdop_blue LOGIN IN ROLE cmdop_owner;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cmdop_green') THEN
    CREATE ROLE cmdop_green LOGIN IN ROLE cmdop_owner;
  END IF;
  -- the audit log's owner: no app role is a member, so the app cannot change past rows
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cmdop_audit_owner') THEN
    CREATE ROLE cmdop_audit_owner NOLOGIN;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cmdop_audit_admin') THEN
    CREATE ROLE cmdop_audit_admin LOGIN IN ROLE cmdop_audit_owner;
  END IF;
END
$$;
-- objects created by either login role belong to the owner role
ALTER ROLE cmdop_blue SET role = 'cmdop_owner';
ALTER ROLE cmdop_green SET role = 'cmdop_owner';
-- audit migrations create objects that belong to the audit owner
ALTER ROLE cmdop_audit_admin SET role = 'cmdop_audit_owner';
-- the app database, and the audit database kept apart from session data (the seed;
-- cmdop_server's "audit" alias: <name>_audit on the same server, same login role)
SELECT 'CREATE DATABASE cmdop OWNER cmdop_owner'
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'cmdop')\gexec
ALTER DATABASE cmdop OWNER TO cmdop_owner;
-- nobody else may even connect to it
REVOKE ALL ON DATABASE cmdop FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE cmdop TO cmdop_owner;
SELECT 'CREATE DATABASE cmdop_audit OWNER cmdop_audit_owner'
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'cmdop_audit')\gexec
ALTER DATABASE cmdop_audit OWNER TO cmdop_audit_owner;
-- nobody else may even connect to it
REVOKE ALL ON DATABASE cmdop_audit FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE cmdop_audit TO cmdop_audit_owner;
-- the app writes audit rows (INSERT, SELECT only: `cmdop-server audit_grants`, run by the
-- installer as the audit owner after each audit migration)
GRANT CONNECT ON DATABASE cmdop_audit TO cmdop_owner;
