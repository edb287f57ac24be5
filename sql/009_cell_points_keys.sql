-- Cell points from before this version kept their coordinates as float8[];
-- they are now bytea runs of 8-byte keys (cell_point_key, defined by the
-- cell points migration). The conversion keeps every row and its order:
-- keys order as the floats do. A no-op on a table that already has keys.
CREATE OR REPLACE FUNCTION cell_point_keys(v double precision[]) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT coalesce(string_agg(cell_point_key(x), ''::bytea ORDER BY i), ''::bytea)
    FROM unnest(v) WITH ORDINALITY AS u(x, i)
$$;
DO $$
BEGIN
    IF (SELECT atttypid FROM pg_attribute
        WHERE attrelid = 'rollup_cell_points'::regclass AND attname = 'lons' AND NOT attisdropped) = 'double precision[]'::regtype THEN
        ALTER TABLE rollup_cell_points
            ALTER COLUMN lons TYPE bytea USING cell_point_keys(lons),
            ALTER COLUMN lats_sorted TYPE bytea USING cell_point_keys(lats_sorted);
        -- A new type takes its default storage; keep the rows uncompressed
        -- and inline, as the cell points migration sets them.
        ALTER TABLE rollup_cell_points
            ALTER COLUMN lons SET STORAGE EXTERNAL,
            ALTER COLUMN lats_sorted SET STORAGE EXTERNAL;
    END IF;
END
$$;
DROP FUNCTION cell_point_keys(double precision[]);
