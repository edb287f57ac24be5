-- Migration 5: exact coordinates per side and grid cell, for the cells a
-- bounding box's edge crosses (src/analytics/points.rs).
--
-- Coordinates are stored as 8-byte keys (cell_point_key,
-- sql/functions/cell_points.sql): bytea compares them bytewise exactly as
-- the floats compare, and the server copies a bytea whole where it decodes a
-- float8[] element by element.
--
-- One row holds at most 140 points of one (file, side, cell), in week
-- segments: weeks[k] (day number of the Monday, as in rollup_cell_week)
-- covers the 1-based positions ends[k-1]+1 .. ends[k]. Within a segment the
-- keys of lons ascend and those of lats_sorted ascend (key i at bytes
-- 8(i-1) .. 8i-1); the byte get_byte(lat_pos, i - 1) is the 0-based position
-- in lats_sorted of the latitude paired with longitude i (same segment).
-- A cell cut by a vertical edge is counted with binary searches over lons,
-- one cut by a horizontal edge over lats_sorted; a corner cell tests its pairs.
CREATE TABLE IF NOT EXISTS rollup_cell_points (
    file_id     integer   NOT NULL,
    side        "char"    NOT NULL,
    ix          integer   NOT NULL,
    iy          integer   NOT NULL,
    weeks       integer[] NOT NULL,
    ends        integer[] NOT NULL,
    lons        bytea     NOT NULL,
    lats_sorted bytea     NOT NULL,
    lat_pos     bytea     NOT NULL
);
-- Rows of up to 140 points (about 2.5 KB) stay inline: no TOAST lookups at
-- query time. The keys barely compress; do not spend load time trying.
ALTER TABLE rollup_cell_points SET (toast_tuple_target = 8160);
ALTER TABLE rollup_cell_points
    ALTER COLUMN lons SET STORAGE EXTERNAL,
    ALTER COLUMN lats_sorted SET STORAGE EXTERNAL,
    ALTER COLUMN lat_pos SET STORAGE EXTERNAL;
CREATE INDEX IF NOT EXISTS rollup_cell_points_cell ON rollup_cell_points (side, ix, iy);

-- A file's cell points are written by a second connection while the file's
-- own transaction is still copying its trips (src/analytics/points_writer.rs),
-- so that two server backends share the work. Those rows commit before the
-- file does, so:
--   * every reader counts a file's cell points only once its load_files row is
--     visible, i.e. once the file's transaction has committed (the query
--     functions join load_files; see weekly_trips_bbox);
--   * cell_points_pending names each file whose cell points are being written.
--     The file's own transaction deletes its row just before COMMIT; a row
--     that outlives its loader (rollback, crash) marks cell points to delete.
--     The loader deletes them right after a rollback, and every loader sweeps
--     what a crashed one left when it starts.
-- While a file loads, its transaction holds pg_advisory_xact_lock(29810,
-- file_id); cleanup takes that lock first, so it never races a live load.
CREATE TABLE IF NOT EXISTS cell_points_pending (
    file_id    integer     PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now()
);
-- Cleanup and compaction find one file's rows (about 1 per 60 trips, so this
-- index is cheap to maintain).
CREATE INDEX IF NOT EXISTS rollup_cell_points_file ON rollup_cell_points (file_id);
