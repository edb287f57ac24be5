-- Exact coordinates per side and grid cell, for the cells a bounding box's
-- edge crosses (see src/points.rs). Written by the loader in each file's
-- transaction, like the other rollups: keyed by file_id, nothing left behind
-- by a rolled-back file.
--
-- Coordinates are stored as 8-byte keys (cell_point_key below): bytea
-- compares them bytewise exactly as the floats compare, and the server
-- copies a bytea whole where it decodes a float8[] element by element.
--
-- One row holds at most 140 points of one (file, side, cell), in week
-- segments: weeks[k] (day number of the Monday, as in rollup_cell_week)
-- covers the 1-based positions ends[k-1]+1 .. ends[k]. Within a segment the
-- keys of lons ascend and those of lats_sorted ascend (key i at bytes
-- 8(i-1) .. 8i-1); the byte get_byte(lat_pos, i - 1) is the 0-based position
-- in lats_sorted of the latitude paired with longitude i (same segment).
-- A cell cut by a vertical edge is counted with binary searches over lons,
-- one cut by a horizontal edge over lats_sorted; a corner cell tests its pairs.

-- The key of a coordinate (src/points.rs, points::key): the float's bits,
-- big-endian, sign bit set for x >= 0 and all bits flipped for x < 0, so
-- keys order as the numbers do; -0.0 has the key of 0.0.
CREATE OR REPLACE FUNCTION cell_point_key(x double precision) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN x < 0
                THEN decode(lpad(to_hex(~(('x' || encode(float8send(x), 'hex'))::bit(64)::bigint)), 16, '0'), 'hex')
                ELSE set_bit(float8send(x + 0.0), 7, 1)
           END
$$;

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

-- Backfill for trips loaded before this migration (a no-op on a new database);
-- the same rows as the loader writes. pos is a point's 0-based position in its
-- row (order week, x, y), lat_rank the position of its latitude in lats_sorted
-- (order week, y, then row position: the loader's stable sort).
WITH pieces AS (
    SELECT a.*, (row_number() OVER (PARTITION BY file_id, side, ix, iy ORDER BY week, x, y) - 1) / 140 AS piece
    FROM (
        SELECT t.file_id, s.side, ST_X(s.p) AS x, ST_Y(s.p) AS y,
               floor(ST_X(s.p) / tripload_setting('grid_deg'))::int AS ix,
               floor(ST_Y(s.p) / tripload_setting('grid_deg'))::int AS iy,
               date_trunc('week', t.datetime AT TIME ZONE 'UTC')::date - date '1970-01-01' AS week
        FROM trips t, LATERAL (VALUES ('o'::"char", t.origin), ('d'::"char", t.destination)) AS s(side, p)
        WHERE t.file_id NOT IN (SELECT file_id FROM rollup_cell_points)
    ) a
),
placed AS (
    SELECT *, row_number() OVER (PARTITION BY file_id, side, ix, iy, piece ORDER BY week, x, y) - 1 AS pos
    FROM pieces
),
ranked AS (
    SELECT *, row_number() OVER (PARTITION BY file_id, side, ix, iy, piece ORDER BY week, y, pos) - 1 AS lat_rank
    FROM placed
),
segments AS (
    SELECT file_id, side, ix, iy, piece, array_agg(week ORDER BY week) AS weeks, array_agg(end_at ORDER BY week) AS ends
    FROM (SELECT file_id, side, ix, iy, piece, week,
                 (sum(count(*)) OVER (PARTITION BY file_id, side, ix, iy, piece ORDER BY week))::int AS end_at
          FROM pieces GROUP BY 1, 2, 3, 4, 5, 6) w
    GROUP BY 1, 2, 3, 4, 5
)
INSERT INTO rollup_cell_points
SELECT p.file_id, p.side, p.ix, p.iy, sg.weeks, sg.ends,
       string_agg(cell_point_key(p.x), ''::bytea ORDER BY p.pos), string_agg(cell_point_key(p.y), ''::bytea ORDER BY p.lat_rank),
       string_agg(set_byte('\x00'::bytea, 0, p.lat_rank::int), ''::bytea ORDER BY p.pos)
FROM ranked p JOIN segments sg USING (file_id, side, ix, iy, piece)
GROUP BY p.file_id, p.side, p.ix, p.iy, p.piece, sg.weeks, sg.ends;
