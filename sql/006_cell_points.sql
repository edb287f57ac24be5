-- Exact coordinates per side, grid cell and week, for the cells a bounding
-- box's edge crosses (see src/points.rs). Written by the loader in each file's
-- transaction, like the other rollups: keyed by file_id, nothing left behind
-- by a rolled-back file.
--
-- One row holds at most 64 points of one (file, side, cell, week): lons
-- ascending, lats aligned with lons (the pairs), lats_sorted ascending. A cell
-- cut by a vertical edge is then counted with binary searches over lons, one
-- cut by a horizontal edge over lats_sorted; a corner cell scans its pairs.
-- Week = day number (since 1970-01-01) of its Monday, as in rollup_cell_week.
CREATE TABLE IF NOT EXISTS rollup_cell_points (
    file_id     integer            NOT NULL,
    side        "char"             NOT NULL,
    ix          integer            NOT NULL,
    iy          integer            NOT NULL,
    week        integer            NOT NULL,
    lons        double precision[] NOT NULL,
    lats        double precision[] NOT NULL,
    lats_sorted double precision[] NOT NULL
);
-- Floats barely compress; do not spend load time trying.
ALTER TABLE rollup_cell_points
    ALTER COLUMN lons SET STORAGE EXTERNAL,
    ALTER COLUMN lats SET STORAGE EXTERNAL,
    ALTER COLUMN lats_sorted SET STORAGE EXTERNAL;
CREATE INDEX IF NOT EXISTS rollup_cell_points_cell ON rollup_cell_points (side, ix, iy, week);

-- Backfill for trips loaded before this migration (a no-op on a new database).
INSERT INTO rollup_cell_points
SELECT file_id, side, ix, iy, week,
       array_agg(x ORDER BY x, y), array_agg(y ORDER BY x, y), array_agg(y ORDER BY y)
FROM (
    SELECT a.*, (row_number() OVER (PARTITION BY file_id, side, ix, iy, week ORDER BY x, y) - 1) / 64 AS piece
    FROM (
        SELECT t.file_id, s.side, ST_X(s.p) AS x, ST_Y(s.p) AS y,
               floor(ST_X(s.p) / tripload_setting('grid_deg'))::int AS ix,
               floor(ST_Y(s.p) / tripload_setting('grid_deg'))::int AS iy,
               date_trunc('week', t.datetime AT TIME ZONE 'UTC')::date - date '1970-01-01' AS week
        FROM trips t, LATERAL (VALUES ('o'::"char", t.origin), ('d'::"char", t.destination)) AS s(side, p)
        WHERE t.file_id NOT IN (SELECT file_id FROM rollup_cell_points)
    ) a
) b
GROUP BY file_id, side, ix, iy, week, piece;
