-- Migration 4: rollups maintained by the loader inside each file's
-- transaction (src/analytics/rollup.rs). Every table is keyed by file_id:
-- concurrent files write disjoint rows, a rolled-back file leaves none,
-- queries sum across files.

-- The grid. Fixed at creation: the rollups are computed with it.
INSERT INTO tripload_settings VALUES ('grid_deg', '0.01')
ON CONFLICT (key) DO NOTHING;

-- Trips per region and ISO week (week = its Monday, UTC).
CREATE TABLE IF NOT EXISTS rollup_region_week (
    file_id   integer  NOT NULL,
    region_id smallint NOT NULL,
    week      date     NOT NULL,
    trips     bigint   NOT NULL
);
CREATE INDEX IF NOT EXISTS rollup_region_week_region ON rollup_region_week (region_id, week);

-- Trips and the latest datetime per region and datasource.
CREATE TABLE IF NOT EXISTS rollup_region_source (
    file_id       integer     NOT NULL,
    region_id     smallint    NOT NULL,
    datasource_id smallint    NOT NULL,
    trips         bigint      NOT NULL,
    last_at       timestamptz NOT NULL
);

-- Trips per grid cell and week, for origins (side 'o') and destinations ('d'):
-- one row per file and cell, weeks[i] (day number of the Monday since
-- 1970-01-01) having trips[i] trips.
-- Cell (ix, iy) = (floor(lon / grid_deg), floor(lat / grid_deg)).
CREATE TABLE IF NOT EXISTS rollup_cell_week (
    file_id integer   NOT NULL,
    side    "char"    NOT NULL,
    ix      integer   NOT NULL,
    iy      integer   NOT NULL,
    weeks   integer[] NOT NULL,
    trips   bigint[]  NOT NULL
);
CREATE INDEX IF NOT EXISTS rollup_cell_week_cell ON rollup_cell_week (side, ix, iy);

-- Compaction (src/analytics/compact.rs). A small file writes rows of its own
-- to every rollup (per cell, region and week): a thousand small files leave a
-- thousand small rows where one large file leaves one full row, and a
-- bounding box pays per row and per week segment. Compaction merges the rows
-- of committed small files into rows with file_id 0, which hold the sum of
-- every compacted file: per (side, cell) sorted runs of cell points exactly
-- as one large file writes them, one rollup_cell_week row per (side, cell),
-- one rollup_region_week row per (region, week) and one rollup_region_source
-- row per (region, datasource). The query functions read file_id 0 like any
-- committed file.
--
-- rollup_uncompacted lists the committed files whose rows compaction has not
-- merged yet: written in the file's own transaction (so a rolled-back file is
-- never listed), deleted by the compaction that merged the file. Listing a
-- file whose rows are already merged is harmless: compaction moves the rows
-- of a listed file that still exist, cell by cell, each cell in one
-- transaction. Files of 1M trips or more are not listed: their rows are
-- already full.
CREATE TABLE IF NOT EXISTS rollup_uncompacted (
    file_id integer PRIMARY KEY
);
-- Compaction and the removal of one file find a file's rows by file_id (one
-- row per file and cell, region or week: cheap to maintain).
CREATE INDEX IF NOT EXISTS rollup_cell_week_file ON rollup_cell_week (file_id);
CREATE INDEX IF NOT EXISTS rollup_region_week_file ON rollup_region_week (file_id);
CREATE INDEX IF NOT EXISTS rollup_region_source_file ON rollup_region_source (file_id);
