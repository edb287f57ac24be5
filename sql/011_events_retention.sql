-- Retention of ingestion_events and the watcher's attempt history.
-- Pruning deletes the oldest events by time (--events-retention-days).
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
