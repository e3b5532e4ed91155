-- mq-sql SQLite checkpoint table, version 1 (SqlCheckpointStore; separate from the message
-- table's migrations). `{table}` is replaced by the validated table name. Sequence numbers are
-- decimal text without leading zeros, ordered by (sequence_length, sequence_number) with the
-- default BINARY collation. Timestamps are integer microseconds since the Unix epoch.
CREATE TABLE IF NOT EXISTS {table} (
    stream TEXT NOT NULL,
    shard TEXT NOT NULL,
    sequence_number TEXT,
    sequence_length INTEGER NOT NULL DEFAULT 0,
    written_epoch INTEGER NOT NULL DEFAULT 0,
    epoch INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (stream, shard)
);
