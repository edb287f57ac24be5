-- Region and datasource names (tables regions and datasources, migration 1).

-- The id of `p_name` in `p_table` ('regions' or 'datasources'), registering
-- it for file `p_file` when `p_register` and the name is new: no row when it
-- is new and not to be registered; a NULL id when every id is taken. New ids
-- are the smallest free ones (ids of deleted names are reused); allocation is
-- serialized by advisory lock (29811, 1), held until the caller's statement
-- commits.
CREATE OR REPLACE FUNCTION tripload_dim_name(p_table text, p_name text, p_file integer, p_register boolean)
RETURNS TABLE (id smallint, inserted boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v smallint;
BEGIN
    IF p_table NOT IN ('regions', 'datasources') THEN
        RAISE EXCEPTION 'unknown dimension table %', p_table;
    END IF;
    EXECUTE format('SELECT t.id FROM %I t WHERE t.name = $1', p_table) INTO v USING p_name;
    IF v IS NOT NULL THEN
        RETURN QUERY SELECT v, false;
        RETURN;
    END IF;
    IF NOT p_register THEN
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(29811, 1);
    -- Each statement sees what the previous holder of the lock committed.
    EXECUTE format('SELECT t.id FROM %I t WHERE t.name = $1', p_table) INTO v USING p_name;
    IF v IS NOT NULL THEN
        RETURN QUERY SELECT v, false;
        RETURN;
    END IF;
    EXECUTE format(
        'SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM %1$I WHERE id = 1) THEN 1::smallint
                ELSE (SELECT (t.id + 1)::smallint FROM %1$I t
                      WHERE t.id >= 1 AND t.id < 32767
                        AND NOT EXISTS (SELECT 1 FROM %1$I u WHERE u.id = t.id + 1)
                      ORDER BY t.id LIMIT 1) END', p_table) INTO v;
    IF v IS NULL THEN
        RETURN QUERY SELECT NULL::smallint, false;
        RETURN;
    END IF;
    EXECUTE format('INSERT INTO %I (id, name, registered_by) VALUES ($1, $2, $3)', p_table)
        USING v, p_name, p_file;
    RETURN QUERY SELECT v, true;
END $$;
