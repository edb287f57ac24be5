-- The TimescaleDB chunks of trips that hold the given days (days since
-- 1970-01-01, UTC), created where missing; returns how many were created.
-- On the hypertable layout a file calls it before its transaction, in a
-- transaction of its own (src/ingest/partitions.rs), so its COPY never
-- creates a chunk: a chunk created inside a file's transaction keeps
-- TimescaleDB's lock on trips (SHARE UPDATE EXCLUSIVE, taken by every
-- chunk creation) until that file commits, and every other loader that
-- needs a new chunk waits for it.
--
-- Each chunk is the one TimescaleDB would create for a row at that time:
-- the dimension's interval aligned on 1970-01-01 00:00 UTC (7 days: from a
-- Thursday), cut where it would overlap an existing chunk, created through
-- _timescaledb_functions.create_chunk (which returns the existing chunk
-- when one with the same range was made meanwhile). A day that spans
-- several chunks (an interval shorter than a day, or not a whole number of
-- days) gets each of them. Creators take turns (advisory lock 29813, 1,
-- the Citus partitions' too); a chunk made meanwhile by another session
-- with other bounds (SQLSTATE TS503) is left to the COPY, as before.
-- Other layouts: an error (trips is not a hypertable).
CREATE OR REPLACE FUNCTION tripload_trips_chunks(p_days integer[])
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    day_us constant bigint := 86400000000;
    dim    integer;
    step   bigint;
    d      integer;
    v      bigint;
    stop   bigint;
    lo     bigint;
    hi     bigint;
    made   integer := 0;
    fresh  boolean;
BEGIN
    SELECT dm.id, dm.interval_length INTO dim, step
    FROM _timescaledb_catalog.dimension dm
    JOIN _timescaledb_catalog.hypertable h ON h.id = dm.hypertable_id
    JOIN pg_class c ON c.relname = h.table_name
    JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = h.schema_name
    WHERE c.oid = 'trips'::regclass AND dm.column_name = 'datetime' AND dm.interval_length IS NOT NULL;
    IF dim IS NULL THEN
        RAISE EXCEPTION 'trips is not a hypertable on datetime (the layout is not timescaledb)';
    END IF;
    -- Nothing to do (the usual case) costs one look at the catalog, no lock.
    IF NOT EXISTS (SELECT 1 FROM tripload_trips_days_without_chunk(dim, p_days)) THEN
        RETURN 0;
    END IF;
    PERFORM pg_advisory_xact_lock(29813, 1);
    FOR d IN SELECT day FROM tripload_trips_days_without_chunk(dim, p_days) LOOP
        v := d * day_us;
        stop := v + day_us;
        WHILE v < stop LOOP
            -- The chunk that holds v, if any: on past it.
            SELECT s.range_end INTO hi FROM tripload_trips_chunk_ranges(dim) s
            WHERE s.range_start <= v AND v < s.range_end;
            IF FOUND THEN
                v := hi;
                CONTINUE;
            END IF;
            -- TimescaleDB's slice for v (dimension.c,
            -- calculate_open_range_default), cut to the gap around v.
            IF v >= 0 THEN
                lo := (v / step) * step;
            ELSE
                lo := ((v + 1) / step) * step - step;
            END IF;
            hi := lo + step;
            lo := greatest(lo, (SELECT max(s.range_end) FROM tripload_trips_chunk_ranges(dim) s
                                WHERE s.range_end <= v));
            hi := least(hi, (SELECT min(s.range_start) FROM tripload_trips_chunk_ranges(dim) s
                             WHERE s.range_start > v));
            BEGIN
                SELECT created INTO fresh FROM _timescaledb_functions.create_chunk(
                    'trips'::regclass, jsonb_build_object('datetime', jsonb_build_array(lo, hi)));
                made := made + fresh::integer;
            EXCEPTION WHEN SQLSTATE 'TS503' THEN
                NULL;
            END;
            v := hi;
        END LOOP;
    END LOOP;
    RETURN made;
END
$$;

-- The ranges [range_start, range_end) of trips' chunks on its time
-- dimension `dim`, in TimescaleDB's internal time (microseconds since
-- 1970-01-01 UTC).
CREATE OR REPLACE FUNCTION tripload_trips_chunk_ranges(dim integer)
RETURNS TABLE (range_start bigint, range_end bigint)
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN QUERY
    SELECT s.range_start, s.range_end
    FROM _timescaledb_catalog.dimension_slice s
    WHERE s.dimension_id = dim
      AND EXISTS (SELECT 1 FROM _timescaledb_catalog.chunk_constraint cc
                  WHERE cc.dimension_slice_id = s.id);
END
$$;

-- The days of `days` (distinct, ascending) that no chunk of trips wholly
-- holds.
CREATE OR REPLACE FUNCTION tripload_trips_days_without_chunk(dim integer, days integer[])
RETURNS TABLE (day integer)
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN QUERY
    WITH r AS MATERIALIZED (SELECT * FROM tripload_trips_chunk_ranges(dim))
    SELECT DISTINCT u FROM unnest(days) u
    WHERE u IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM r
                      WHERE r.range_start <= u * 86400000000::bigint
                        AND (u + 1) * 86400000000::bigint <= r.range_end)
    ORDER BY u;
END
$$;
