-- Cell point keys (rollup_cell_points, migration 5) and the binary searches
-- the bounding-box queries run over them.

-- The key of a coordinate (src/analytics/points.rs, points::key): the float's
-- bits, big-endian, sign bit set for x >= 0 and all bits flipped for x < 0,
-- so keys order as the numbers do; -0.0 has the key of 0.0.
CREATE OR REPLACE FUNCTION cell_point_key(x double precision) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN x < 0
                THEN decode(lpad(to_hex(~(('x' || encode(float8send(x), 'hex'))::bit(64)::bigint)), 16, '0'), 'hex')
                ELSE set_bit(float8send(x + 0.0), 7, 1)
           END
$$;

-- The coordinate a cell point key holds (the inverse of cell_point_key, for
-- reading rollup_cell_points by hand; the queries compare keys directly).
CREATE OR REPLACE FUNCTION cell_point_coord(k bytea) RETURNS double precision
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN v < 0 THEN 1.0::float8 ELSE -1.0::float8 END
           * CASE WHEN e = 0 THEN m * power(2::float8, -1074)
                  ELSE (4503599627370496 + m)::float8 * power(2::float8, e - 1075) END
    FROM (SELECT v, (mag >> 52)::int AS e, (mag & 4503599627370495)::float8 AS m
          FROM (SELECT v, CASE WHEN v < 0 THEN v ELSE ~v END # (-9223372036854775808)::bigint AS mag
                FROM (SELECT ('x' || encode(k, 'hex'))::bit(64)::bigint AS v) a) b) c
$$;

-- cell_point_keys_le(v, a, e, k) / cell_point_keys_lt: how many of the keys
-- at 1-based positions a..e of v (ascending; a segment of one row, so at
-- most 140 keys: points::MAX_PER_ROW) are <= k (< k). A binary search
-- unrolled into nested CASEs: 8 comparisons, each a substring and a memcmp.
-- The planner inlines it (~1 us per search, where a PL/pgSQL loop costs
-- several times that); branches past 140 keys are left out, which keeps
-- the text short to parse and plan (~6 ms less for a query's first call).
CREATE OR REPLACE FUNCTION pg_temp.cell_point_search(op text, p integer, s integer, lim integer) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    -- p: the largest offset known to hold a key that passes (-1: none yet).
    IF s = 0 THEN
        RETURN (p + 1)::text;
    END IF;
    IF p + s >= lim THEN
        RETURN pg_temp.cell_point_search(op, p, s / 2, lim);
    END IF;
    RETURN format('CASE WHEN a + %s <= e AND substring(v, (a + %s) * 8 - 7, 8) %s k THEN %s ELSE %s END',
                  p + s, p + s, op,
                  pg_temp.cell_point_search(op, p + s, s / 2, lim), pg_temp.cell_point_search(op, p, s / 2, lim));
END
$$;
DO $$
DECLARE
    fn text;
    op text;
BEGIN
    FOR fn, op IN VALUES ('cell_point_keys_le', '<='), ('cell_point_keys_lt', '<') LOOP
        EXECUTE format('CREATE OR REPLACE FUNCTION %I(v bytea, a integer, e integer, k bytea) RETURNS integer
                        LANGUAGE sql IMMUTABLE PARALLEL SAFE AS %L',
                       fn, 'SELECT ' || pg_temp.cell_point_search(op, -1, 128, 140));
    END LOOP;
END
$$;
DROP FUNCTION pg_temp.cell_point_search(text, integer, integer, integer);
