-- Migration 8: on the Citus layout, trips becomes a table range-partitioned
-- on datetime (Citus's time partitions, not TimescaleDB), still distributed
-- by file_id and co-located with the rollups: each partition is a
-- distributed table of its own, so a worker's shard of trips is itself
-- partitioned by time. The partition interval is --chunk-interval (default
-- 7 days), recorded as the setting partition_interval; it must be whole
-- days or months. Partitions start at 00:00 UTC, aligned as
-- create_time_partitions aligns them (7 days: on Mondays, the ISO weeks of
-- the rollups and of the retention cut-off; a month: on the 1st), so each
-- UTC day lies in one partition.
--
-- Partitions are created by tripload_trips_partitions (below) for the days
-- a file's rows fall on, before the file's transaction and in a
-- transaction of their own (src/ingest/partitions.rs): a COPY never meets a
-- missing partition, no DDL runs inside a file's transaction, and making a
-- partition does not wait for the files loading meanwhile. There is
-- no DEFAULT partition: rows it held would make creating their partition
-- fail later (PostgreSQL refuses a partition whose rows sit in the default).
--
-- Other layouts: nothing. An existing Citus trips is converted with its
-- rows (new partitioned table, partitions for its days, INSERT ... SELECT,
-- old table dropped; grants on trips must be given again).

-- The time partitions of trips that hold the given days (days since
-- 1970-01-01, UTC), created where missing; returns how many were created.
-- Each is named and aligned by Citus (get_missing_time_partition_ranges, as
-- create_time_partitions does), but made as a table of its own, distributed
-- with trips, then attached: ATTACH PARTITION takes SHARE UPDATE EXCLUSIVE
-- on trips, which the files copying into it meanwhile do not conflict with,
-- where create_time_partitions' CREATE TABLE ... PARTITION OF would take
-- ACCESS EXCLUSIVE and wait for every one of them (and hold up new ones).
-- Creators take turns (advisory lock 29813, 1).
CREATE OR REPLACE FUNCTION tripload_trips_partitions(p_days integer[])
RETURNS integer
LANGUAGE plpgsql
SET TimeZone = 'UTC'
AS $$
DECLARE
    step  interval := (SELECT value::interval FROM tripload_settings WHERE key = 'partition_interval');
    d     integer;
    at    timestamptz;
    pivot timestamptz;
    start timestamptz;
    stop  timestamptz;
    m     record;
    made  integer := 0;
BEGIN
    IF step IS NULL THEN
        RAISE EXCEPTION 'trips has no time partitions (the layout is not citus)';
    END IF;
    PERFORM pg_advisory_xact_lock(29813, 1);
    -- The days no partition holds yet (the partitions read once).
    FOR d IN
        WITH r AS MATERIALIZED (SELECT lo, hi FROM tripload_trips_partition_ranges())
        SELECT DISTINCT u FROM unnest(p_days) u
        WHERE u IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM r
                          WHERE r.lo <= timestamptz '1970-01-01 00:00:00+00' + u * interval '1 day'
                            AND timestamptz '1970-01-01 00:00:00+00' + u * interval '1 day' < r.hi)
        ORDER BY u
    LOOP
        at := timestamptz '1970-01-01 00:00:00+00' + d * interval '1 day';
        -- A partition made for an earlier day may hold this one.
        CONTINUE WHEN EXISTS (
            SELECT 1 FROM tripload_trips_partition_ranges() p WHERE p.lo <= at AND at < p.hi);
        SELECT min(p.lo) INTO pivot FROM tripload_trips_partition_ranges() p;
        IF pivot IS NULL THEN
            -- The first: Citus aligns it (date_trunc to the week, month, ...).
            start := at;
            stop := at + interval '1 microsecond';
        ELSE
            -- Stepping from the first partition, as Citus does, to the start
            -- of the one that holds the day.
            start := pivot;
            WHILE start > at LOOP
                start := start - step;
            END LOOP;
            WHILE start + step <= at LOOP
                start := start + step;
            END LOOP;
            stop := start + step;
        END IF;
        FOR m IN SELECT * FROM get_missing_time_partition_ranges('trips', step, stop, start) LOOP
            EXECUTE format('CREATE TABLE %I (LIKE trips)', m.partition_name);
            PERFORM create_distributed_table(quote_ident(m.partition_name), 'file_id',
                                             colocate_with => 'trips');
            EXECUTE format('ALTER TABLE trips ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                           m.partition_name, m.range_from_value, m.range_to_value);
            made := made + 1;
        END LOOP;
    END LOOP;
    RETURN made;
END
$$;

-- The ranges [lo, hi) of the time partitions of trips (PL/pgSQL: its body
-- names Citus's view time_partitions, which only the Citus layout has).
CREATE OR REPLACE FUNCTION tripload_trips_partition_ranges()
RETURNS TABLE (partition regclass, lo timestamptz, hi timestamptz)
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN QUERY
    SELECT tp.partition,
           CASE WHEN tp.from_value <> '' THEN tp.from_value::timestamptz END,
           CASE WHEN tp.to_value <> '' THEN tp.to_value::timestamptz END
    FROM time_partitions tp
    WHERE tp.parent_table = 'trips'::regclass AND tp.from_value <> '' AND tp.to_value <> '';
END
$$;

DO $$
DECLARE
    step interval := coalesce(nullif(current_setting('tripload.chunk_interval', true), '')::interval,
                              interval '7 days');
    kept text[];
    made integer;
BEGIN
    IF (SELECT value FROM tripload_settings WHERE key = 'time_layout') IS DISTINCT FROM 'citus'
       OR EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = 'trips'::regclass) THEN
        RETURN;
    END IF;
    IF step <= interval '0' OR date_trunc('day', step) <> step THEN
        RAISE EXCEPTION 'on Citus the time partitions of trips must be whole days or months, not %', step
              USING HINT = 'give --chunk-interval such as ''7 days'' or ''1 month''';
    END IF;
    INSERT INTO tripload_settings (key, value) VALUES ('partition_interval', step::text)
    ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value;
    SELECT array_agg(indexname::text) INTO kept FROM pg_indexes
    WHERE tablename = 'trips' AND indexname IN ('trips_origin_gist', 'trips_destination_gist', 'trips_file_brin');
    DROP VIEW IF EXISTS trips_named;
    ALTER TABLE trips RENAME TO trips_unpartitioned;
    CREATE TABLE trips (LIKE trips_unpartitioned) PARTITION BY RANGE (datetime);
    PERFORM create_distributed_table('trips', 'file_id', colocate_with => 'trips_unpartitioned');
    made := tripload_trips_partitions(ARRAY(
        SELECT DISTINCT (datetime AT TIME ZONE 'UTC')::date - date '1970-01-01' FROM trips_unpartitioned));
    INSERT INTO trips SELECT * FROM trips_unpartitioned;
    DROP TABLE trips_unpartitioned;
    -- The index of migration 2, and those `db index --spatial` and
    -- `db index --by-file` had made, on every partition and shard.
    CREATE INDEX trips_datetime_brin ON trips USING brin (datetime);
    IF 'trips_file_brin' = ANY (kept) THEN
        CREATE INDEX trips_file_brin ON trips USING brin (file_id) WITH (autosummarize = on);
    END IF;
    IF 'trips_origin_gist' = ANY (kept) THEN
        CREATE INDEX trips_origin_gist ON trips USING gist (origin);
    END IF;
    IF 'trips_destination_gist' = ANY (kept) THEN
        CREATE INDEX trips_destination_gist ON trips USING gist (destination);
    END IF;
    CREATE VIEW trips_named AS
    SELECT t.datetime, r.name AS region, d.name AS datasource, t.origin, t.destination, t.file_id
    FROM trips t
    JOIN regions r ON r.id = t.region_id
    JOIN datasources d ON d.id = t.datasource_id;
    RAISE NOTICE 'trips: partitioned by % on datetime (% partitions for the rows it had)', step, made;
END
$$;
