-- Dead letters on SQLite, version 1. {table} is the validated table name.
-- Times are Unix milliseconds; `message` is the message's JSON text, `error` the error chain as a
-- JSON array and `error_text` its joined text (for searches).
CREATE TABLE IF NOT EXISTS {table} (
    id TEXT NOT NULL PRIMARY KEY,
    queue TEXT NOT NULL,
    message_id TEXT NOT NULL,
    message_type TEXT NOT NULL,
    message TEXT NOT NULL,
    backend TEXT NOT NULL,
    shard_id TEXT,
    sequence_number TEXT,
    error TEXT NOT NULL,
    error_text TEXT NOT NULL,
    exhausted INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    failures INTEGER NOT NULL,
    first_failed_at INTEGER NOT NULL,
    last_failed_at INTEGER NOT NULL,
    consumer_id TEXT NOT NULL,
    replay_state TEXT NOT NULL DEFAULT 'none',
    replay_generation INTEGER NOT NULL DEFAULT 0,
    replay_message_id TEXT,
    replay_target TEXT,
    replay_started_at INTEGER,
    replayed_at INTEGER,
    UNIQUE (queue, message_id)
);
CREATE INDEX IF NOT EXISTS {idx_failed} ON {table} (last_failed_at);
CREATE INDEX IF NOT EXISTS {idx_type} ON {table} (message_type);
