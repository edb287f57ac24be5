-- Query functions over the rollups (CREATE OR REPLACE: re-applied on upgrade).
--
-- A trip is in an area when its origin (p_by = 'origin', the default), its
-- destination ('destination') or both ('both') lie in it. A bounding box is
-- min_lon, min_lat, max_lon, max_lat (WGS84), edges inclusive. Weeks are ISO
-- weeks (Monday 00:00 UTC). The window defaults to the weeks that have data in
-- the dataset; weeks without matching trips count as zero.

-- The window [first Monday, last Monday], defaulting to the dataset's weeks.
CREATE OR REPLACE FUNCTION trip_week_window(p_from date, p_to date, OUT first_week date, OUT last_week date)
LANGUAGE sql STABLE AS $$
    SELECT coalesce(date_trunc('week', p_from)::date, (SELECT min(week) FROM rollup_region_week)),
           coalesce(date_trunc('week', p_to)::date, (SELECT max(week) FROM rollup_region_week))
$$;

-- Trips per week for a region.
CREATE OR REPLACE FUNCTION weekly_trips_region(p_region text, p_from date DEFAULT NULL, p_to date DEFAULT NULL)
RETURNS TABLE (week date, trips bigint)
LANGUAGE sql STABLE AS $$
    WITH w AS (SELECT * FROM trip_week_window(p_from, p_to)),
    weeks AS (SELECT generate_series(w.first_week, w.last_week, interval '1 week')::date AS week FROM w),
    counts AS (
        SELECT r.week, sum(r.trips)::bigint AS trips
        FROM rollup_region_week r JOIN regions g ON g.id = r.region_id, w
        WHERE g.name = p_region AND r.week BETWEEN w.first_week AND w.last_week
        GROUP BY r.week
    )
    SELECT weeks.week, coalesce(counts.trips, 0)::bigint FROM weeks LEFT JOIN counts USING (week) ORDER BY 1
$$;

-- Trips per week for a bounding box. Cells wholly inside the box come from the
-- cell/week rollup; trips in the cells the box's edge crosses (and, for
-- p_by = 'both', all trips) are counted from the raw rows, exactly. The raw
-- part uses a GiST index on trips when one exists (`tripload db index --spatial`).
-- Rust and PostgreSQL compute a cell as floor(coordinate / grid_deg) with the
-- same IEEE arithmetic, so each trip is counted in exactly one of the two parts.
CREATE OR REPLACE FUNCTION weekly_trips_bbox(
    min_lon double precision, min_lat double precision, max_lon double precision, max_lat double precision,
    p_by text DEFAULT 'origin', p_from date DEFAULT NULL, p_to date DEFAULT NULL)
RETURNS TABLE (week date, trips bigint)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    g double precision := tripload_setting('grid_deg');
    -- Cells strictly inside the box, with a margin for floating-point cell assignment.
    in_x0 int := ceil(min_lon / g + 1e-7)::int;
    in_x1 int := floor(max_lon / g - 1e-7)::int - 1;
    in_y0 int := ceil(min_lat / g + 1e-7)::int;
    in_y1 int := floor(max_lat / g - 1e-7)::int - 1;
    box geometry := ST_MakeEnvelope(min_lon, min_lat, max_lon, max_lat, 4326);
    -- The edge band (box minus the interior cells) as four strips, widened a
    -- hair so that floating-point cell assignment cannot slip a point between
    -- them; the exact predicate below decides. With GiST indexes the raw part
    -- then reads only the trips near the edge.
    e double precision := 1e-9;
    xi0 double precision := in_x0 * g;
    xi1 double precision := (in_x1 + 1) * g;
    yi0 double precision := in_y0 * g;
    yi1 double precision := (in_y1 + 1) * g;
    s1 geometry;
    s2 geometry;
    s3 geometry;
    s4 geometry;
    w0 date;
    w1 date;
    t0 timestamptz;
    t1 timestamptz;
BEGIN
    IF p_by NOT IN ('origin', 'destination', 'both') THEN
        RAISE EXCEPTION 'p_by must be origin, destination or both, not %', p_by;
    END IF;
    IF min_lon > max_lon OR min_lat > max_lat THEN
        RAISE EXCEPTION 'empty bounding box: min must not exceed max';
    END IF;
    SELECT * INTO w0, w1 FROM trip_week_window(p_from, p_to);
    IF in_x0 > in_x1 OR in_y0 > in_y1 THEN
        s1 := box; s2 := box; s3 := box; s4 := box;
    ELSE
        s1 := ST_MakeEnvelope(min_lon, min_lat, xi0 + e, max_lat, 4326);
        s2 := ST_MakeEnvelope(xi1 - e, min_lat, max_lon, max_lat, 4326);
        s3 := ST_MakeEnvelope(xi0 - e, min_lat, xi1 + e, yi0 + e, 4326);
        s4 := ST_MakeEnvelope(xi0 - e, yi1 - e, xi1 + e, max_lat, 4326);
    END IF;
    t0 := w0::timestamp AT TIME ZONE 'UTC';
    t1 := (w1 + 7)::timestamp AT TIME ZONE 'UTC';
    IF p_by = 'both' THEN
        RETURN QUERY
        WITH weeks AS (SELECT generate_series(w0, w1, interval '1 week')::date AS week),
        raw AS (
            SELECT date_trunc('week', t.datetime AT TIME ZONE 'UTC')::date AS week, count(*)::bigint AS n
            FROM trips t
            WHERE t.origin && box AND t.destination && box
              AND ST_X(t.origin) BETWEEN min_lon AND max_lon AND ST_Y(t.origin) BETWEEN min_lat AND max_lat
              AND ST_X(t.destination) BETWEEN min_lon AND max_lon AND ST_Y(t.destination) BETWEEN min_lat AND max_lat
              AND t.datetime >= t0 AND t.datetime < t1
            GROUP BY 1
        )
        SELECT weeks.week, coalesce(raw.n, 0)::bigint FROM weeks LEFT JOIN raw USING (week) ORDER BY 1;
    ELSE
        RETURN QUERY
        WITH weeks AS (SELECT generate_series(w0, w1, interval '1 week')::date AS week),
        inner_cells AS (
            SELECT date '1970-01-01' + u.w AS week, sum(u.n)::bigint AS n
            FROM rollup_cell_week r, unnest(r.weeks, r.trips) AS u(w, n)
            WHERE r.side = CASE p_by WHEN 'origin' THEN 'o' ELSE 'd' END::"char"
              AND r.ix BETWEEN in_x0 AND in_x1 AND r.iy BETWEEN in_y0 AND in_y1
              AND date '1970-01-01' + u.w BETWEEN w0 AND w1
            GROUP BY 1
        ),
        pts AS (
            SELECT t.datetime, t.origin AS p FROM trips t
            WHERE p_by = 'origin'
              AND (t.origin && s1 OR t.origin && s2 OR t.origin && s3 OR t.origin && s4)
              AND t.datetime >= t0 AND t.datetime < t1
            UNION ALL
            SELECT t.datetime, t.destination FROM trips t
            WHERE p_by = 'destination'
              AND (t.destination && s1 OR t.destination && s2 OR t.destination && s3 OR t.destination && s4)
              AND t.datetime >= t0 AND t.datetime < t1
        ),
        edge AS (
            SELECT date_trunc('week', pts.datetime AT TIME ZONE 'UTC')::date AS week, count(*)::bigint AS n
            FROM pts
            WHERE ST_X(pts.p) BETWEEN min_lon AND max_lon AND ST_Y(pts.p) BETWEEN min_lat AND max_lat
              AND NOT (floor(ST_X(pts.p) / g)::int BETWEEN in_x0 AND in_x1
                       AND floor(ST_Y(pts.p) / g)::int BETWEEN in_y0 AND in_y1)
            GROUP BY 1
        )
        SELECT weeks.week, (coalesce(i.n, 0) + coalesce(e.n, 0))::bigint
        FROM weeks LEFT JOIN inner_cells i USING (week) LEFT JOIN edge e USING (week) ORDER BY 1;
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


-- Trip groups: trips with the same region, origin cell, destination cell and
-- time-of-day bucket (UTC), largest first. Cell (ix, iy) = (floor(lon / cell),
-- floor(lat / cell)) with cell = p_cell_deg (default: the grid, 0.01 degree,
-- about 1.1 km north-south and 0.7 km east-west at 50°N); bucket k covers
-- [k * p_bucket_minutes, (k + 1) * p_bucket_minutes) minutes after midnight.
-- Optional filters: a region, and a bounding box that the origin, the
-- destination or both must lie in (edges inclusive).
-- Computed from the raw trips at query time (see README, "Trip groups").
CREATE OR REPLACE FUNCTION trip_groups(
    p_region text DEFAULT NULL,
    min_lon double precision DEFAULT NULL, min_lat double precision DEFAULT NULL,
    max_lon double precision DEFAULT NULL, max_lat double precision DEFAULT NULL,
    p_by text DEFAULT 'origin',
    p_cell_deg double precision DEFAULT NULL,
    p_bucket_minutes integer DEFAULT 60,
    p_top integer DEFAULT 20)
RETURNS TABLE (region text, origin_ix integer, origin_iy integer,
               destination_ix integer, destination_iy integer,
               bucket_start time, trips bigint,
               first_at timestamptz, last_at timestamptz, datasources text[])
LANGUAGE plpgsql STABLE SET work_mem = '256MB' AS $$
DECLARE
    g double precision := coalesce(p_cell_deg, tripload_setting('grid_deg'));
    b bigint := p_bucket_minutes::bigint * 60;
    rid smallint;
    has_box boolean := min_lon IS NOT NULL;
    box geometry;
BEGIN
    IF p_by NOT IN ('origin', 'destination', 'both') THEN
        RAISE EXCEPTION 'p_by must be origin, destination or both, not %', p_by;
    END IF;
    IF NOT (g > 0) THEN
        RAISE EXCEPTION 'cell size must be positive, not %', g;
    END IF;
    IF p_bucket_minutes IS NULL OR p_bucket_minutes < 1 OR p_bucket_minutes > 1440 THEN
        RAISE EXCEPTION 'bucket must be 1 to 1440 minutes, not %', p_bucket_minutes;
    END IF;
    IF has_box AND (min_lat IS NULL OR max_lon IS NULL OR max_lat IS NULL
                    OR min_lon > max_lon OR min_lat > max_lat) THEN
        RAISE EXCEPTION 'bounding box needs min_lon <= max_lon and min_lat <= max_lat';
    END IF;
    IF p_region IS NOT NULL THEN
        SELECT id INTO rid FROM regions WHERE name = p_region;
        IF rid IS NULL THEN
            RETURN;
        END IF;
    END IF;
    IF has_box THEN
        box := ST_MakeEnvelope(min_lon, min_lat, max_lon, max_lat, 4326);
    END IF;
    RETURN QUERY
    WITH k AS (
        SELECT t.region_id,
               floor(ST_X(t.origin) / g)::int AS oix, floor(ST_Y(t.origin) / g)::int AS oiy,
               floor(ST_X(t.destination) / g)::int AS dix, floor(ST_Y(t.destination) / g)::int AS diy,
               (mod(floor(extract(epoch FROM t.datetime))::bigint, 86400) + 86400) % 86400 / b AS bk,
               t.datetime, t.datasource_id
        FROM trips t
        WHERE (p_region IS NULL OR t.region_id = rid)
          AND (NOT has_box OR p_by = 'destination' OR (t.origin && box
               AND ST_X(t.origin) BETWEEN min_lon AND max_lon AND ST_Y(t.origin) BETWEEN min_lat AND max_lat))
          AND (NOT has_box OR p_by = 'origin' OR (t.destination && box
               AND ST_X(t.destination) BETWEEN min_lon AND max_lon AND ST_Y(t.destination) BETWEEN min_lat AND max_lat))
    ),
    -- Two steps: per datasource first, so that both steps can hash (an
    -- array_agg(DISTINCT) would force a sort of every trip).
    per_source AS (
        SELECT k.region_id, k.oix, k.oiy, k.dix, k.diy, k.bk, k.datasource_id, count(*) AS n,
               min(k.datetime) AS first_at, max(k.datetime) AS last_at
        FROM k
        GROUP BY 1, 2, 3, 4, 5, 6, 7
    ),
    grp AS (
        SELECT p.region_id, p.oix, p.oiy, p.dix, p.diy, p.bk, sum(p.n)::bigint AS n,
               min(p.first_at) AS first_at, max(p.last_at) AS last_at,
               array_agg(p.datasource_id) AS ds
        FROM per_source p
        GROUP BY 1, 2, 3, 4, 5, 6
        ORDER BY n DESC, 1, 2, 3, 4, 5, 6
        LIMIT p_top
    )
    SELECT r.name, grp.oix, grp.oiy, grp.dix, grp.diy,
           (time '00:00' + make_interval(secs => grp.bk * b)),
           grp.n, grp.first_at, grp.last_at,
           ARRAY(SELECT d.name FROM datasources d WHERE d.id = ANY (grp.ds) ORDER BY d.name)
    FROM grp JOIN regions r ON r.id = grp.region_id
    ORDER BY grp.n DESC, grp.region_id, grp.oix, grp.oiy, grp.dix, grp.diy, grp.bk;
END
$$;
