-- A numeric setting of tripload_settings (migration 1), e.g. the grid
-- (grid_deg); NULL when it is not set.
CREATE OR REPLACE FUNCTION tripload_setting(k text) RETURNS double precision
LANGUAGE sql STABLE AS $$ SELECT value::double precision FROM tripload_settings WHERE key = k $$;
