-- mq-sql PostgreSQL schema, version 2: the ids of deleted messages that stay taken for the
-- idempotency window (SqlOptions::idempotency_window), so a publish cannot reuse them.
CREATE TABLE IF NOT EXISTS {remembered} (
    queue varchar(255) NOT NULL,
    id varchar(128) NOT NULL,
    forget_at timestamptz NOT NULL,
    PRIMARY KEY (queue, id)
);
CREATE INDEX IF NOT EXISTS {idx_forget} ON {remembered} (forget_at);
