-- Migration 2: how trips is laid out in time. The layout is chosen by
-- src/db/layout.rs (TimeLayout) and passed in the transaction-local setting
-- tripload.time_layout, with the chunk interval (--chunk-interval, checked
-- as an interval) in tripload.chunk_interval. The layout is recorded in
-- tripload_settings and never changes afterwards.
--
-- 'timescaledb': trips becomes a hypertable on datetime. No default time
--   index: the index costs 2.6x in COPY time (14 s instead of 5.4 s for 2M
--   rows) and chunk exclusion already prunes by time.
-- 'plain': a plain table with a BRIN index on datetime. BRIN is a few pages
--   per million rows and nearly free to maintain during COPY, unlike a
--   B-tree (or the GiST indexes of `tripload db index --spatial`).
-- 'citus': as 'plain' here; migration 7 distributes trips and the rollups
--   (the BRIN index goes into every shard), migration 8 partitions trips by
--   time.
DO $$
DECLARE
    layout text := current_setting('tripload.time_layout');
BEGIN
    CASE layout
    WHEN 'timescaledb' THEN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
        PERFORM create_hypertable('trips', 'datetime',
                                  chunk_time_interval => current_setting('tripload.chunk_interval')::interval,
                                  create_default_indexes => false,
                                  if_not_exists => true,
                                  migrate_data => true);
    WHEN 'plain' THEN
        CREATE INDEX IF NOT EXISTS trips_datetime_brin ON trips USING brin (datetime);
    WHEN 'citus' THEN
        CREATE INDEX IF NOT EXISTS trips_datetime_brin ON trips USING brin (datetime);
    ELSE
        RAISE EXCEPTION 'unknown time layout %', layout;
    END CASE;
    INSERT INTO tripload_settings (key, value) VALUES ('time_layout', layout)
    ON CONFLICT (key) DO NOTHING;
END
$$;
