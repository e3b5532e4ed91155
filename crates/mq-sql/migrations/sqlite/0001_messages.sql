-- mq-sql SQLite schema, version 1. Timestamps are integer microseconds since the Unix epoch.
-- Placeholders in braces are replaced by the validated table name and names derived from it.
CREATE TABLE IF NOT EXISTS {table} (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    id TEXT NOT NULL,
    message_type TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'scheduled',
    execute_at INTEGER NOT NULL,
    expires_at INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER,
    retry_delay_ms INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    processing_started_at INTEGER,
    partition_key TEXT,
    metadata TEXT,
    lease_owner TEXT,
    lease_expires_at INTEGER,
    last_error TEXT,
    UNIQUE (queue, id)
);
CREATE INDEX IF NOT EXISTS {idx_ready} ON {table} (queue, execute_at, seq) WHERE status = 'scheduled';
CREATE INDEX IF NOT EXISTS {idx_leased} ON {table} (queue, lease_expires_at) WHERE status = 'processing';
CREATE INDEX IF NOT EXISTS {idx_expiring} ON {table} (queue, expires_at) WHERE status = 'scheduled' AND expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS {idx_finished} ON {table} (updated_at) WHERE status IN ('executed', 'failed', 'expired', 'dead_lettered');
CREATE TABLE IF NOT EXISTS {archive} AS SELECT * FROM {table} WHERE 0;
