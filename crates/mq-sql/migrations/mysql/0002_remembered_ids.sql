-- mq-sql MySQL/MariaDB schema, version 2: the ids of deleted messages that stay taken for the
-- idempotency window (SqlOptions::idempotency_window), so a publish cannot reuse them.
CREATE TABLE IF NOT EXISTS {remembered} (
    queue VARCHAR(255) NOT NULL,
    id VARCHAR(128) NOT NULL,
    forget_at DATETIME(6) NOT NULL,
    PRIMARY KEY (queue, id),
    KEY {idx_forget} (forget_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
