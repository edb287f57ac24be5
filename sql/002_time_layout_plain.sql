-- Time layout without TimescaleDB: a plain table with a BRIN index on datetime.
-- BRIN is a few pages per million rows and nearly free to maintain during
-- COPY, unlike a B-tree (or the GiST indexes spatial queries get later).
CREATE INDEX IF NOT EXISTS trips_datetime_brin ON trips USING brin (datetime);
