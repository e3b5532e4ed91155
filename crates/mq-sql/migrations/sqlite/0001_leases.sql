-- mq-sql SQLite lease table, version 1 (SqlLeaseTable; separate from the message table's
-- migrations). `{table}` is replaced by the validated table name. Keys compare and sort byte-wise
-- with the default BINARY collation.
CREATE TABLE IF NOT EXISTS {table} (
    stream TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (stream, kind, name)
);
