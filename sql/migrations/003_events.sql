-- Migration 3: ingestion events and the watcher's attempt history.

-- Push status events (schema version 1 of the payload, see README "Events").
-- Every state change of a file is inserted here and published with
-- pg_notify('tripload_events', payload); a late subscriber catches up from
-- this table by id. Pruning deletes the oldest events by time
-- (--events-retention-days).
CREATE TABLE IF NOT EXISTS ingestion_events (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind      text        NOT NULL,
    file_name text        NOT NULL,
    payload   jsonb       NOT NULL
);
CREATE INDEX IF NOT EXISTS ingestion_events_file ON ingestion_events (file_name, id);
CREATE INDEX IF NOT EXISTS ingestion_events_at ON ingestion_events (at);

-- Watch mode: environment failures of a file, so that a file that keeps
-- failing is quarantined after --max-attempts even across restarts of the
-- watcher. Keyed by the file's device, inode, size and mtime; a row goes
-- when the file is loaded, failed or quarantined.
CREATE TABLE IF NOT EXISTS load_attempts (
    file_key   text        PRIMARY KEY,
    file_name  text        NOT NULL,
    attempts   jsonb       NOT NULL DEFAULT '[]',
    updated_at timestamptz NOT NULL DEFAULT now()
);
