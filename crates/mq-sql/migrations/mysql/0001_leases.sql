-- mq-sql MySQL/MariaDB lease table, version 1 (SqlLeaseTable; separate from the message table's
-- migrations). `{table}` is replaced by the validated table name. Keys are VARBINARY: they
-- compare and sort byte-wise with no padding, where even utf8mb4_bin (PAD SPACE on MariaDB) takes
-- 'a' and 'a ' for the same key. Values are LONGTEXT: a shard listing of a large stream runs to
-- hundreds of KiB, past TEXT's 64 KiB.
CREATE TABLE IF NOT EXISTS {table} (
    stream VARBINARY(255) NOT NULL,
    kind VARBINARY(255) NOT NULL,
    name VARBINARY(255) NOT NULL,
    value LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (stream, kind, name)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
