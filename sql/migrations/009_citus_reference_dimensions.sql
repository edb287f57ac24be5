-- Migration 9: on the Citus layout, the dimension tables regions and
-- datasources become reference tables: one shard, a copy on every node (the
-- workers and, when it is in the metadata, the coordinator). A worker then
-- joins trips and the rollups with the names locally instead of receiving
-- the coordinator's rows with every query, and every node can read them.
--
-- The ids stay smallint and are assigned as on every layout: by
-- tripload_dim_name (sql/functions/dimensions.sql), the smallest free id
-- under advisory lock (29811, 1) on the coordinator, in a statement of its
-- own outside any file's transaction. Citus does not distribute a smallint
-- identity column, and the identity generator is never used (every INSERT
-- gives the id), so it is dropped here first.
--
-- Writes to a reference table are applied on every node with two-phase
-- commit and serialized by Citus per table: registering a new name is one
-- short autocommitted statement, and a file's transaction writes to them
-- only when it uses a name that is still pending (src/db/dims.rs), so
-- loaders do not wait on each other's names. A new name needs every node
-- up; a stopped worker makes the file fail as the environment's fault and
-- it is retried (watch) like any load while a worker is down.
-- Other layouts: nothing.
DO $$
BEGIN
    IF (SELECT value FROM tripload_settings WHERE key = 'time_layout') = 'citus' THEN
        ALTER TABLE regions ALTER COLUMN id DROP IDENTITY IF EXISTS;
        ALTER TABLE datasources ALTER COLUMN id DROP IDENTITY IF EXISTS;
        PERFORM create_reference_table('regions');
        PERFORM create_reference_table('datasources');
    END IF;
END
$$;
