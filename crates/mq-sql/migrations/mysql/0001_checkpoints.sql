-- mq-sql MySQL/MariaDB checkpoint table, version 1 (SqlCheckpointStore; separate from the message
-- table's migrations). `{table}` is replaced by the validated table name. Sequence numbers are
-- decimal text without leading zeros, ordered by (sequence_length, sequence_number) with a
-- binary collation. Timestamps are UTC, DATETIME(6).
CREATE TABLE IF NOT EXISTS {table} (
    stream VARCHAR(255) NOT NULL,
    shard VARCHAR(255) NOT NULL,
    sequence_number VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NULL,
    sequence_length INT NOT NULL DEFAULT 0,
    written_epoch BIGINT NOT NULL DEFAULT 0,
    epoch BIGINT NOT NULL DEFAULT 0,
    updated_at DATETIME(6) NOT NULL,
    PRIMARY KEY (stream, shard)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
