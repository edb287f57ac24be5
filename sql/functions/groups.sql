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
