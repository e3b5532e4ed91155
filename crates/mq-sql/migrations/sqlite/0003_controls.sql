-- mq-sql SQLite schema, version 3: queue controls. Priorities (claimed higher first), unique
-- keys (held under a unique index while their message waits or runs; a key with a window is
-- looked up among finished messages on publish), the cancelled status among the finished ones,
-- and the pause table (a row per paused queue, checked by every claim).
ALTER TABLE {table} ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE {table} ADD COLUMN unique_key TEXT;
ALTER TABLE {table} ADD COLUMN unique_window_ms INTEGER;
ALTER TABLE {archive} ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE {archive} ADD COLUMN unique_key TEXT;
ALTER TABLE {archive} ADD COLUMN unique_window_ms INTEGER;
-- Ready messages, in claim order: higher priority first, then due time, then publication order.
DROP INDEX IF EXISTS {idx_ready};
CREATE INDEX IF NOT EXISTS {idx_ready} ON {table} (queue, priority DESC, execute_at, seq) WHERE status = 'scheduled';
-- One waiting or running message per unique key.
CREATE UNIQUE INDEX IF NOT EXISTS {idx_unique} ON {table} (queue, unique_key) WHERE unique_key IS NOT NULL AND status IN ('scheduled', 'processing');
-- Keys that keep blocking for a window after their message finished.
CREATE INDEX IF NOT EXISTS {idx_keys} ON {table} (queue, unique_key) WHERE unique_window_ms IS NOT NULL;
-- Finished messages, for retention, now with cancelled ones.
DROP INDEX IF EXISTS {idx_finished};
CREATE INDEX IF NOT EXISTS {idx_finished} ON {table} (updated_at) WHERE status IN ('executed', 'failed', 'expired', 'dead_lettered', 'cancelled');
-- Paused queues: claims hand out nothing while a queue has a row here.
CREATE TABLE IF NOT EXISTS {paused} (
    queue TEXT PRIMARY KEY,
    paused_at INTEGER NOT NULL
);
