-- Cell points are written by a second connection while the file's own
-- transaction is still copying its trips (src/points_writer.rs), so that two
-- server backends share the work. Those rows commit before the file does, so:
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
-- Cleanup deletes one file's rows (about 1 per 60 trips, so this index is cheap
-- to maintain).
CREATE INDEX IF NOT EXISTS rollup_cell_points_file ON rollup_cell_points (file_id);
