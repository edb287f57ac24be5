-- Data lifecycle (src/lifecycle/): unloading or replacing one file, and
-- retention of recent trips, with the rollups kept exact.

-- No index on trips(file_id): a BRIN index would narrow an unload's DELETE
-- to the file's pages, but its upkeep on every COPY row slows every load
-- (docs/benchmarks.md). An unload searches the file's weeks instead (chunk
-- exclusion on a hypertable, the datetime BRIN on a plain table); where
-- files are unloaded often, `tripload db index --by-file` adds the BRIN.

-- Retention touches only the rollup rows that start before the cut-off.
CREATE INDEX IF NOT EXISTS rollup_cell_points_first_week ON rollup_cell_points ((weeks[1]));
CREATE INDEX IF NOT EXISTS rollup_cell_week_first_week ON rollup_cell_week ((weeks[1]));
CREATE INDEX IF NOT EXISTS rollup_region_week_week ON rollup_region_week (week);

-- Ledger rows of files that were unloaded or replaced: who removed them and
-- when (load_files keeps only loaded files, so the same bytes load again).
CREATE TABLE IF NOT EXISTS load_files_removed (
    file_id       integer     PRIMARY KEY,
    content_hash  text        NOT NULL,
    file_name     text        NOT NULL,
    size_bytes    bigint      NOT NULL,
    rows_loaded   bigint      NOT NULL,
    committed_at  timestamptz,
    loaded_by     text        NOT NULL,
    removed_at    timestamptz NOT NULL DEFAULT now(),
    removed_by    text        NOT NULL,
    -- 'unloaded', or 'replaced by <file_id>'
    how           text        NOT NULL,
    trips_removed bigint      NOT NULL
);
CREATE INDEX IF NOT EXISTS load_files_removed_hash ON load_files_removed (content_hash);

-- Each retention run: the cut-off (a Monday, 00:00 UTC), who and what went.
CREATE TABLE IF NOT EXISTS retention_runs (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    cut_off        timestamptz NOT NULL,
    asked          text        NOT NULL,
    at             timestamptz NOT NULL DEFAULT now(),
    by             text        NOT NULL,
    trips_dropped  bigint      NOT NULL,
    chunks_dropped integer     NOT NULL
);
