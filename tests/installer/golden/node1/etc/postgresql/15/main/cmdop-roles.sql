-- managed by cmdop-install, do not edit (site golden)
-- The app's roles: one NOLOGIN owner of every object, a NOLOGIN role with data rights
-- only (rows, not schema), and two LOGIN roles in it that the app uses. Rotation sets a
-- password on the idle one, switches the app, then PASSWORD NULLs the old one. Migrations
-- run as the admin login, which acts as the owner and which only the installer uses.
-- Passwords are never here: the installer sends SCRAM verifiers separately.
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cmdop_owner') THEN
    CREATE ROLE cmdop_owner NOLOGIN;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cmdop_app') THEN
    CREATE ROLE cmdop_app NOLOGIN;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cmdop_blue') THEN
    CREATE ROLE cmdop_blue LOGIN IN ROLE cmdop_app;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cmdop_green') THEN
    CREATE ROLE cmdop_green LOGIN IN ROLE cmdop_app;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cmdop_admin') THEN
    CREATE ROLE cmdop_admin LOGIN IN ROLE cmdop_owner;
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
-- Sites deployed before the app lost the owner's rights: blue/green were members of the
-- owner and acted as it. They join the data role now and leave the owner at the end, once
-- the data role holds every right the release still serving needs.
GRANT cmdop_app TO cmdop_blue, cmdop_green;
-- app migrations create objects that belong to the owner
ALTER ROLE cmdop_admin SET role = 'cmdop_owner';
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
-- the app reaches both databases; it writes audit rows (INSERT, SELECT only:
-- `cmdop-server audit_grants`, run by the installer as the audit owner after each audit
-- migration)
GRANT CONNECT ON DATABASE cmdop TO cmdop_app;
GRANT CONNECT ON DATABASE cmdop_audit TO cmdop_app;
REVOKE CONNECT ON DATABASE cmdop_audit FROM cmdop_owner;
\connect cmdop
-- anything an older site's app login created is the owner's (none should exist)
REASSIGN OWNED BY cmdop_blue, cmdop_green TO cmdop_owner;
-- the app's data rights: rows of every table and the sequences behind its ids, now and
-- for every table the owner (migrations) creates later; no CREATE, ALTER, DROP, TRUNCATE
GRANT USAGE ON SCHEMA public TO cmdop_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO cmdop_app;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO cmdop_app;
ALTER DEFAULT PRIVILEGES FOR ROLE cmdop_owner IN SCHEMA public
  GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO cmdop_app;
ALTER DEFAULT PRIVILEGES FOR ROLE cmdop_owner IN SCHEMA public
  GRANT USAGE, SELECT ON SEQUENCES TO cmdop_app;
\connect cmdop_audit
-- On such a site the app wrote audit rows as the owner (audit_grants had given the owner
-- its rights here): the data role gets the same ones first, so the release still serving
-- keeps writing audit rows until the new release's audit_grants, after its migrations,
-- sets the data role's own. The owner keeps its rights: that release's open connections
-- act as the owner until they close (nobody may open a new one as it).
SELECT format('GRANT %s ON %s %s TO cmdop_app', a.privilege_type,
              CASE c.relkind WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, c.oid::regclass)
  FROM pg_class c, aclexplode(c.relacl) a
  WHERE c.relnamespace = 'public'::regnamespace AND a.grantee = 'cmdop_owner'::regrole\gexec
SELECT format('GRANT EXECUTE ON FUNCTION %s TO cmdop_app', p.oid::regprocedure)
  FROM pg_proc p, aclexplode(p.proacl) a
  WHERE p.pronamespace = 'public'::regnamespace AND a.grantee = 'cmdop_owner'::regrole\gexec
-- then the logins lose the owner's rights (a stolen app password must not drop tables)
REVOKE cmdop_owner FROM cmdop_blue, cmdop_green;
ALTER ROLE cmdop_blue RESET role;
ALTER ROLE cmdop_green RESET role;
