-- Rollups maintained by the loader inside each file's transaction (see
-- src/rollup.rs). Every table is keyed by file_id: concurrent files write
-- disjoint rows, a rolled-back file leaves none, queries sum across files.

-- The grid. Fixed at creation: the rollups are computed with it.
CREATE TABLE IF NOT EXISTS tripload_settings (
    key   text PRIMARY KEY,
    value text NOT NULL
);
INSERT INTO tripload_settings VALUES ('grid_deg', '0.01')
ON CONFLICT (key) DO NOTHING;

CREATE OR REPLACE FUNCTION tripload_setting(k text) RETURNS double precision
LANGUAGE sql STABLE AS $$ SELECT value::double precision FROM tripload_settings WHERE key = k $$;

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

-- Backfill for trips loaded before this migration (a no-op on a new database).
INSERT INTO rollup_region_week
SELECT file_id, region_id, date_trunc('week', datetime AT TIME ZONE 'UTC')::date, count(*)
FROM trips WHERE file_id NOT IN (SELECT file_id FROM rollup_region_week) GROUP BY 1, 2, 3;
INSERT INTO rollup_region_source
SELECT file_id, region_id, datasource_id, count(*), max(datetime)
FROM trips WHERE file_id NOT IN (SELECT file_id FROM rollup_region_source) GROUP BY 1, 2, 3;
INSERT INTO rollup_cell_week
SELECT file_id, side, ix, iy, array_agg(week - date '1970-01-01' ORDER BY week), array_agg(n ORDER BY week)
FROM (
SELECT file_id, side, ix, iy, week, count(*) AS n
FROM (
    SELECT file_id, s.side,
           floor(CASE s.side WHEN 'o' THEN ST_X(origin) ELSE ST_X(destination) END / tripload_setting('grid_deg'))::int AS ix,
           floor(CASE s.side WHEN 'o' THEN ST_Y(origin) ELSE ST_Y(destination) END / tripload_setting('grid_deg'))::int AS iy,
           date_trunc('week', datetime AT TIME ZONE 'UTC')::date AS week
    FROM trips, (VALUES ('o'::"char"), ('d'::"char")) AS s(side)
    WHERE file_id NOT IN (SELECT file_id FROM rollup_cell_week)
) c
GROUP BY 1, 2, 3, 4, 5
) w
GROUP BY 1, 2, 3, 4;
