-- Cell points in one table, and compaction of small files' rollup rows.
--
-- rollup_cell_points is one table whatever the number of files: the loader's
-- second connection copies a file's rows into it (src/points_writer.rs), and
-- a failed file's rows are deleted by file_id (index rollup_cell_points_file).
-- Databases written by older loaders keep each segment of a file in a child
-- table (rollup_cell_points_<file>_<n>, inheriting from it); their rows move
-- into the parent here and the children are dropped. The loader does the same
-- in batches before the migration (points_writer::absorb_segment_tables), so
-- that a database with thousands of children never locks them all in one
-- transaction; this statement then finds none left. Idempotent.
DO $$
DECLARE
    child regclass;
BEGIN
    FOR child IN SELECT inhrelid::regclass FROM pg_inherits
                 WHERE inhparent = 'rollup_cell_points'::regclass LOOP
        EXECUTE format('INSERT INTO rollup_cell_points (file_id, side, ix, iy, weeks, ends, lons, lats_sorted, lat_pos)
                        SELECT file_id, side, ix, iy, weeks, ends, lons, lats_sorted, lat_pos FROM ONLY %s', child);
        EXECUTE format('DROP TABLE %s', child);
    END LOOP;
END
$$;

-- Compaction (src/compact.rs). A small file writes rows of its own to every
-- rollup (per cell, region and week): a thousand small files leave a
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
INSERT INTO rollup_uncompacted
SELECT file_id FROM load_files WHERE rows_loaded < 1000000
ON CONFLICT (file_id) DO NOTHING;
-- Compaction and the removal of one file find a file's rows by file_id (one
-- row per file and cell, region or week: cheap to maintain).
CREATE INDEX IF NOT EXISTS rollup_cell_week_file ON rollup_cell_week (file_id);
CREATE INDEX IF NOT EXISTS rollup_region_week_file ON rollup_region_week (file_id);
CREATE INDEX IF NOT EXISTS rollup_region_source_file ON rollup_region_source (file_id);
