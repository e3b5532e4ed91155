-- mq-sql SQLite schema, version 2: the ids of deleted messages that stay taken for the
-- idempotency window (SqlOptions::idempotency_window), so a publish cannot reuse them.
-- Times are Unix microseconds.
CREATE TABLE IF NOT EXISTS {remembered} (
    queue TEXT NOT NULL,
    id TEXT NOT NULL,
    forget_at INTEGER NOT NULL,
    PRIMARY KEY (queue, id)
);
CREATE INDEX IF NOT EXISTS {idx_forget} ON {remembered} (forget_at);
