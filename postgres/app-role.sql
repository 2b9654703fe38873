-- The API's PostgreSQL role: it reads and writes rows and can change nothing in the schema;
-- `sluice-api migrate` runs as the owner. Idempotent: run it again to change the password or
-- after adding the role to an existing database (docs/DEPLOYMENT.md, "PostgreSQL roles").
-- psql variables: app_role, app_password, owner (the role that runs the migrations), e.g.
--   psql -v app_role=sluice_app -v app_password=… -v owner=sluice -f app-role.sql
-- (The settings carry the variables into the DO block, where psql does not substitute; \o keeps
-- the password off the terminal.)
\o /dev/null
SELECT set_config('sluice.app_role', :'app_role', false),
       set_config('sluice.app_password', :'app_password', false),
       set_config('sluice.owner', :'owner', false);
\o

DO $$
DECLARE
    app text := current_setting('sluice.app_role');
    owner text := current_setting('sluice.owner');
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = app) THEN
        EXECUTE format('ALTER ROLE %I LOGIN PASSWORD %L', app, current_setting('sluice.app_password'));
    ELSE
        EXECUTE format('CREATE ROLE %I LOGIN PASSWORD %L', app, current_setting('sluice.app_password'));
    END IF;
    -- Nobody but the owner creates objects in the schema (PostgreSQL 15's default; older
    -- releases let every role create tables in `public`).
    REVOKE CREATE ON SCHEMA public FROM PUBLIC;
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), app);
    EXECUTE format('GRANT USAGE ON SCHEMA public TO %I', app);
    -- What exists now, and what the owner's migrations create later.
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO %I', app);
    EXECUTE format('GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO %I', app);
    EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA public '
                   'GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO %I', owner, app);
    EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA public '
                   'GRANT USAGE, SELECT ON SEQUENCES TO %I', owner, app);
END
$$;

-- The password stays out of the session's settings once used.
\o /dev/null
SELECT set_config('sluice.app_password', '', false);
\o
