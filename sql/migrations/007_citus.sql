-- Migration 7: on the Citus layout (migration 2, src/db/layout.rs), trips
-- and the rollups become distributed tables, all by file_id and co-located:
-- a file's COPY and its rollup rows land on one shard group (one worker),
-- files spread over the workers, and the file's transaction commits them
-- with Citus's two-phase commit together with the coordinator's tables.
--
-- Everything else stays a plain table on the coordinator (migration 9 then
-- makes the two dimension tables reference tables): the ledger (load_files:
-- its content_hash is unique across all files, which a table distributed by
-- file_id cannot enforce), the events, attempts, settings and lifecycle
-- records. A file's transaction writes its ledger row on the coordinator and
-- its rows on a worker; Citus commits the worker's part with PREPARE
-- TRANSACTION and the coordinator's commit record decides it (its recovery
-- finishes or aborts a prepared transaction left by a crash). Queries join
-- the coordinator's tables with the distributed ones by sending the (small)
-- coordinator rows along.
-- Other layouts: nothing.
DO $$
BEGIN
    IF (SELECT value FROM tripload_settings WHERE key = 'time_layout') = 'citus' THEN
        PERFORM create_distributed_table('trips', 'file_id');
        PERFORM create_distributed_table('rollup_region_week', 'file_id', colocate_with => 'trips');
        PERFORM create_distributed_table('rollup_region_source', 'file_id', colocate_with => 'trips');
        PERFORM create_distributed_table('rollup_cell_week', 'file_id', colocate_with => 'trips');
        PERFORM create_distributed_table('rollup_cell_points', 'file_id', colocate_with => 'trips');
    END IF;
END
$$;
