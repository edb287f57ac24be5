-- Weekly trip counts over the rollups.
--
-- A trip is in an area when its origin (p_by = 'origin', the default), its
-- destination ('destination') or both ('both') lie in it. A bounding box is
-- min_lon, min_lat, max_lon, max_lat (WGS84), edges inclusive. Weeks are ISO
-- weeks (Monday 00:00 UTC). The window defaults to the weeks that have data in
-- the dataset; weeks without matching trips count as zero.

-- The window [first Monday, last Monday], defaulting to the dataset's weeks.
CREATE OR REPLACE FUNCTION trip_week_window(p_from date, p_to date, OUT first_week date, OUT last_week date)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    first_week := coalesce(date_trunc('week', p_from)::date, (SELECT min(week) FROM rollup_region_week));
    last_week := coalesce(date_trunc('week', p_to)::date, (SELECT max(week) FROM rollup_region_week));
END
$$;

-- Trips per week for a region. PL/pgSQL, not SQL: Citus cannot plan a SQL
-- function's parameterized query on distributed tables (the Citus layout).
CREATE OR REPLACE FUNCTION weekly_trips_region(p_region text, p_from date DEFAULT NULL, p_to date DEFAULT NULL)
RETURNS TABLE (week date, trips bigint)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH w AS (SELECT * FROM trip_week_window(p_from, p_to)),
    weeks AS (SELECT generate_series(w.first_week, w.last_week, interval '1 week')::date AS week FROM w),
    counts AS (
        SELECT r.week, sum(r.trips)::bigint AS trips
        FROM rollup_region_week r JOIN regions g ON g.id = r.region_id, w
        WHERE g.name = p_region AND r.week BETWEEN w.first_week AND w.last_week
        GROUP BY r.week
    )
    SELECT weeks.week, coalesce(counts.trips, 0)::bigint FROM weeks LEFT JOIN counts USING (week) ORDER BY 1;
END
$$;

-- Trips per week for a bounding box. Cells wholly inside the box come from
-- rollup_cell_week; the cells its edge crosses from the exact coordinates in
-- rollup_cell_points (binary searches over sorted keys); p_by = 'both' needs
-- origin and destination together, which no rollup keeps, and reads the raw
-- trips (with the GiST indexes of `tripload db index --spatial` if built).
-- Rust and PostgreSQL compute a cell as floor(coordinate / grid_deg) with the
-- same IEEE arithmetic (correctly rounded division of the same doubles), and
-- every cell that is not wholly inside is counted from its exact coordinates.
CREATE OR REPLACE FUNCTION weekly_trips_bbox(
    min_lon double precision, min_lat double precision, max_lon double precision, max_lat double precision,
    p_by text DEFAULT 'origin', p_from date DEFAULT NULL, p_to date DEFAULT NULL)
RETURNS TABLE (week date, trips bigint)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    caller_jit text := current_setting('jit');
    gist boolean;
    g double precision := tripload_setting('grid_deg');
    -- Every trip lies in the world; cutting the box to it keeps cell numbers small.
    x0 double precision := greatest(min_lon, -180);
    x1 double precision := least(max_lon, 180);
    y0 double precision := greatest(min_lat, -90);
    y1 double precision := least(max_lat, 90);
    -- Cells a point of the box can fall in (division and floor are monotonic).
    cx0 int := floor(x0 / g)::int;
    cx1 int := floor(x1 / g)::int;
    cy0 int := floor(y0 / g)::int;
    cy1 int := floor(y1 / g)::int;
    -- Cells wholly inside the box, exactly, whatever the rounding: a point
    -- west of x0 has lon / g <= x0 / g (rounding is monotonic), so its cell is
    -- at most cx0 and cells from cx0 + 1 on hold no such point; likewise a
    -- point east of x1 is in cell cx1 or beyond. So the edge band is one cell
    -- wide on each side, also when an edge lies on a grid line.
    in_x0 int := cx0 + 1;
    in_x1 int := cx1 - 1;
    in_y0 int := cy0 + 1;
    in_y1 int := cy1 - 1;
    -- The edge band as four strips around the inner columns sx0..sx1.
    sx0 int;
    sx1 int;
    s "char" := CASE p_by WHEN 'origin' THEN 'o' ELSE 'd' END;
    -- Built only for p_by = 'both': the first PostGIS call in a session
    -- loads its library (~9 ms), which the rollup branch does not need.
    box geometry;
    w0 date;
    w1 date;
    wi0 int;
    wi1 int;
    t0 timestamptz;
    t1 timestamptz;
    -- The box's edges as cell point keys (see cell_point_key).
    kx0 bytea := cell_point_key(x0);
    kx1 bytea := cell_point_key(x1);
    ky0 bytea := cell_point_key(y0);
    ky1 bytea := cell_point_key(y1);
BEGIN
    IF p_by NOT IN ('origin', 'destination', 'both') THEN
        RAISE EXCEPTION 'p_by must be origin, destination or both, not %', p_by;
    END IF;
    IF min_lon > max_lon OR min_lat > max_lat THEN
        RAISE EXCEPTION 'empty bounding box: min must not exceed max';
    END IF;
    SELECT * INTO w0, w1 FROM trip_week_window(p_from, p_to);
    wi0 := w0 - date '1970-01-01';
    wi1 := w1 - date '1970-01-01';
    t0 := w0::timestamp AT TIME ZONE 'UTC';
    t1 := (w1 + 7)::timestamp AT TIME ZONE 'UTC';
    IF x0 > x1 OR y0 > y1 THEN
        -- Outside the world: no trips.
        RETURN QUERY SELECT generate_series(w0, w1, interval '1 week')::date, 0::bigint;
        RETURN;
    END IF;
    IF in_x0 > in_x1 OR in_y0 > in_y1 THEN
        -- No inner cells: one strip holding every candidate cell.
        sx0 := cx1 + 1;
        sx1 := cx1;
    ELSE
        sx0 := in_x0;
        sx1 := in_x1;
    END IF;
    IF p_by = 'both' THEN
        -- The && tests let the planner use the GiST indexes of `tripload db
        -- index --spatial`; without them they only cost time (a scan of 100M
        -- trips took 8.4 s with them, 6.2-6.5 s without, like the brute-force
        -- query), so they are skipped.
        gist := to_regclass('trips_origin_gist') IS NOT NULL AND to_regclass('trips_destination_gist') IS NOT NULL;
        box := ST_MakeEnvelope(min_lon, min_lat, max_lon, max_lat, 4326);
        RETURN QUERY
        WITH weeks AS (SELECT generate_series(w0, w1, interval '1 week')::date AS week),
        raw AS (
            SELECT date_trunc('week', t.datetime AT TIME ZONE 'UTC')::date AS week, count(*)::bigint AS n
            FROM trips t
            WHERE (NOT gist OR (t.origin && box AND t.destination && box))
              AND ST_X(t.origin) BETWEEN min_lon AND max_lon AND ST_Y(t.origin) BETWEEN min_lat AND max_lat
              AND ST_X(t.destination) BETWEEN min_lon AND max_lon AND ST_Y(t.destination) BETWEEN min_lat AND max_lat
              AND t.datetime >= t0 AND t.datetime < t1
            GROUP BY 1
        )
        SELECT weeks.week, coalesce(raw.n, 0)::bigint FROM weeks LEFT JOIN raw USING (week) ORDER BY 1;
    ELSE
        -- No JIT for this query: the planner's estimate for the edge band's
        -- per-segment subqueries crosses jit_optimize_above_cost on large
        -- tables, and compiling then took ~0.5 s of a ~0.6 s answer (2x2 km
        -- box at 100M trips: 77 ms without). The raw scan above keeps it
        -- (~10% faster with it). Restored for the rest of the caller's
        -- transaction below; an error ends the transaction anyway.
        PERFORM set_config('jit', 'off', true);
        RETURN QUERY
        WITH weeks AS (SELECT generate_series(w0, w1, interval '1 week')::date AS week),
        -- The arrays are expanded by unnest in the select list (a ProjectSet
        -- that zips them), not in FROM, where each call is materialized into
        -- a tuplestore first. Weeks outside the window are dropped by the
        -- join with weeks below rather than by a filter here, whose tiny row
        -- estimate made the planner sort (on disk) instead of hashing. Both:
        -- 33-50 ms instead of 72-87 ms for the 4,557 inner rows of a
        -- 0.4 x 0.3 degree box at 100M trips.
        inner_cells AS (
            SELECT date '1970-01-01' + u.w AS week, sum(u.n)::bigint AS n
            FROM (SELECT unnest(r.weeks) AS w, unnest(r.trips) AS n
                  FROM rollup_cell_week r
                  WHERE r.side = s
                    AND r.ix BETWEEN in_x0 AND in_x1 AND r.iy BETWEEN in_y0 AND in_y1) u
            GROUP BY 1
        ),
        -- Each row of rollup_cell_points in the edge band, per week segment
        -- [a, e] in the window (kind: 1 = a cell wholly inside in latitude,
        -- 2 = wholly inside in longitude, 3 = a corner).
        seg AS (
            SELECT u.w, coalesce(u.ends[u.k - 1], 0) + 1 AS a, u.e, u.lons, u.lats_sorted, u.lat_pos, u.kind
            FROM (
                SELECT unnest(p.weeks) AS w, unnest(p.ends) AS e, generate_series(1, cardinality(p.weeks)) AS k,
                       p.ends, p.lons, p.lats_sorted, p.lat_pos,
                       CASE WHEN p.iy BETWEEN in_y0 AND in_y1 THEN 1 WHEN p.ix BETWEEN in_x0 AND in_x1 THEN 2 ELSE 3 END AS kind
                FROM rollup_cell_points p
                WHERE p.side = s
                  -- Cell points commit before their file does (src/points_writer.rs):
                  -- they count once the file's ledger row is visible. Rows
                  -- with file_id 0 are compacted rows of committed files.
                  -- (Not correlated: Citus sends the coordinator's ledger
                  -- along to the workers, where it cannot for EXISTS.)
                  AND (p.file_id = 0 OR p.file_id IN (SELECT f.file_id FROM load_files f))
                  AND ((p.ix BETWEEN cx0 AND sx0 - 1 AND p.iy BETWEEN cy0 AND cy1)
                    OR (p.ix BETWEEN sx1 + 1 AND cx1 AND p.iy BETWEEN cy0 AND cy1)
                    OR (p.ix BETWEEN sx0 AND sx1 AND p.iy BETWEEN cy0 AND in_y0 - 1)
                    OR (p.ix BETWEEN sx0 AND sx1 AND p.iy BETWEEN in_y1 + 1 AND cy1))
            ) u
            WHERE u.w BETWEEN wi0 AND wi1
            OFFSET 0
        ),
        -- The keys a cut cell is searched in, and their bounds: picked once
        -- per segment (OFFSET 0 keeps the picks out of the inlined searches,
        -- which would evaluate them at every step).
        cut AS (
            SELECT seg.*,
                   CASE seg.kind WHEN 1 THEN seg.lons ELSE seg.lats_sorted END AS v,
                   CASE seg.kind WHEN 1 THEN kx0 ELSE ky0 END AS lo,
                   CASE seg.kind WHEN 1 THEN kx1 ELSE ky1 END AS hi
            FROM seg
            OFFSET 0
        ),
        -- Counted per segment first, then summed by week: the rows being
        -- grouped are two integers instead of the segments' keys. A cut cell
        -- counts its keys in [lo, hi] with two binary searches; a corner cell
        -- finds the positions of its longitudes in [x0, x1] the same way and
        -- tests only their latitudes (at lat_pos byte i - 1).
        edge AS (
            SELECT date '1970-01-01' + x.w AS week, sum(x.n)::bigint AS n
            FROM (
                SELECT c.w,
                       CASE WHEN c.kind < 3
                            THEN cell_point_keys_le(c.v, c.a, c.e, c.hi) - cell_point_keys_lt(c.v, c.a, c.e, c.lo)
                            ELSE (SELECT count(*)
                                  FROM generate_series(c.a + cell_point_keys_lt(c.lons, c.a, c.e, kx0),
                                                       c.a - 1 + cell_point_keys_le(c.lons, c.a, c.e, kx1)) AS i
                                  WHERE substring(c.lats_sorted FROM get_byte(c.lat_pos, i - 1) * 8 + 1 FOR 8) BETWEEN ky0 AND ky1)::int
                       END AS n
                FROM cut c
                OFFSET 0
            ) x
            GROUP BY x.w
        )
        SELECT weeks.week, (coalesce(i.n, 0) + coalesce(e.n, 0))::bigint
        FROM weeks LEFT JOIN inner_cells i USING (week) LEFT JOIN edge e USING (week) ORDER BY 1;
        PERFORM set_config('jit', caller_jit, true);
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION weekly_average_region(p_region text, p_from date DEFAULT NULL, p_to date DEFAULT NULL)
RETURNS numeric LANGUAGE sql STABLE AS $$
    SELECT coalesce(sum(trips)::numeric / nullif(count(*), 0), 0) FROM weekly_trips_region(p_region, p_from, p_to)
$$;

CREATE OR REPLACE FUNCTION weekly_average_bbox(
    min_lon double precision, min_lat double precision, max_lon double precision, max_lat double precision,
    p_by text DEFAULT 'origin', p_from date DEFAULT NULL, p_to date DEFAULT NULL)
RETURNS numeric LANGUAGE sql STABLE AS $$
    SELECT coalesce(sum(trips)::numeric / nullif(count(*), 0), 0)
    FROM weekly_trips_bbox(min_lon, min_lat, max_lon, max_lat, p_by, p_from, p_to)
$$;
