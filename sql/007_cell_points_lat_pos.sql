-- Cell points from before this version kept a third float8 array (lats,
-- aligned with lons) where they now keep the byte positions lat_pos. The
-- table is derived data: an old one is dropped here and rebuilt from trips by
-- the cell points migration, which follows this in the same transaction (on a
-- large database that rebuild takes minutes; upgrade every loader together).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_attribute
               WHERE attrelid = to_regclass('rollup_cell_points') AND attname = 'lats' AND NOT attisdropped) THEN
        DROP TABLE rollup_cell_points;
    END IF;
END
$$;
