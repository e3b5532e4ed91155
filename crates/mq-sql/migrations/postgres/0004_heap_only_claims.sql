-- mq-sql PostgreSQL schema, version 4: claims and lease renewals that write no index entry.
-- A claim changes only columns that no index reads, so PostgreSQL keeps the new row version on
-- the same page and adds no index entry (a heap-only update). Indexes that tell waiting and
-- running messages from finished ones read `live`, a stored column computed from the status
-- (1 while a message waits or runs, NULL once it finished), which does not change when a
-- waiting message starts running. An equality, so that the planner takes it as selective and
-- reads the ready index in order even before the table has statistics. Claimed messages stay
-- in the ready index: claims skip them by status and take back the ones whose lease expired,
-- so the lease index is gone. Half of each page is left free for the claim's row version.
-- Adding a stored column rewrites the table once, under an exclusive lock.
ALTER TABLE {table} SET (fillfactor = 50);
DROP INDEX IF EXISTS {idx_leased};
DROP INDEX IF EXISTS {idx_ready};
DROP INDEX IF EXISTS {idx_expiring};
DROP INDEX IF EXISTS {idx_unique};
DROP INDEX IF EXISTS {idx_finished};
-- The old indexes go first, so that the rewrite rebuilds only the ones that stay.
ALTER TABLE {table} ADD COLUMN IF NOT EXISTS live smallint
    GENERATED ALWAYS AS (CASE WHEN status IN ('scheduled', 'processing') THEN 1 END) STORED;
ALTER TABLE {archive} ADD COLUMN IF NOT EXISTS live smallint;
-- Waiting and running messages, in claim order: higher priority first, then due time, then
-- publication order.
CREATE INDEX IF NOT EXISTS {idx_ready} ON {table} (queue, priority DESC, execute_at, seq) WHERE live = 1;
-- Messages with a deadline, to mark the waiting ones expired.
CREATE INDEX IF NOT EXISTS {idx_expiring} ON {table} (queue, expires_at) WHERE expires_at IS NOT NULL AND live = 1;
-- One waiting or running message per unique key.
CREATE UNIQUE INDEX IF NOT EXISTS {idx_unique} ON {table} (queue, unique_key) WHERE unique_key IS NOT NULL AND live = 1;
-- Finished messages, for retention.
CREATE INDEX IF NOT EXISTS {idx_finished} ON {table} (updated_at) WHERE live IS NULL;
