-- mq-sql PostgreSQL checkpoint table, version 1 (SqlCheckpointStore; separate from the message
-- table's migrations). `{table}` is replaced by the validated table name. Sequence numbers are
-- decimal text without leading zeros, ordered by (sequence_length, sequence_number) with the
-- byte-wise "C" collation.
CREATE TABLE IF NOT EXISTS {table} (
    stream TEXT NOT NULL,
    shard TEXT NOT NULL,
    sequence_number TEXT COLLATE "C",
    sequence_length INTEGER NOT NULL DEFAULT 0,
    written_epoch BIGINT NOT NULL DEFAULT 0,
    epoch BIGINT NOT NULL DEFAULT 0,
    updated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (stream, shard)
);
