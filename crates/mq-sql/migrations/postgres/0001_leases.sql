-- mq-sql PostgreSQL lease table, version 1 (SqlLeaseTable; separate from the message table's
-- migrations). `{table}` is replaced by the validated table name. Keys compare and sort byte-wise
-- (the "C" collation), so names that differ only in case or in trailing spaces stay apart and a
-- listing comes back in the same order on every database.
CREATE TABLE IF NOT EXISTS {table} (
    stream TEXT COLLATE "C" NOT NULL,
    kind TEXT COLLATE "C" NOT NULL,
    name TEXT COLLATE "C" NOT NULL,
    value TEXT NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (stream, kind, name)
);
