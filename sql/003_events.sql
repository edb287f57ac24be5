-- Push status events (schema version 1 of the payload, see README "Events").
-- Every state change of a file is inserted here and published with
-- pg_notify('tripload_events', payload); a late subscriber catches up from
-- this table by id.
CREATE TABLE IF NOT EXISTS ingestion_events (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind      text        NOT NULL,
    file_name text        NOT NULL,
    payload   jsonb       NOT NULL
);
CREATE INDEX IF NOT EXISTS ingestion_events_file ON ingestion_events (file_name, id);
