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
END
$$;
-- objects created by either login role belong to the owner role
ALTER ROLE cmdop_blue SET role = 'cmdop_owner';
ALTER ROLE cmdop_green SET role = 'cmdop_owner';
-- the app database, and the audit database kept apart from session data (the seed;
-- cmdop_server's "audit" alias defaults to <name>_audit on the same server and role)
SELECT 'CREATE DATABASE cmdop OWNER cmdop_owner'
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'cmdop')\gexec
-- nobody else may even connect to it
REVOKE ALL ON DATABASE cmdop FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE cmdop TO cmdop_owner;
SELECT 'CREATE DATABASE cmdop_audit OWNER cmdop_owner'
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'cmdop_audit')\gexec
-- nobody else may even connect to it
REVOKE ALL ON DATABASE cmdop_audit FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE cmdop_audit TO cmdop_owner;
