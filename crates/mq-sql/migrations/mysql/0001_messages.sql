-- mq-sql MySQL/MariaDB schema, version 1. Timestamps are UTC, DATETIME(6).
-- Placeholders in braces are replaced by the validated table name and names derived from it.
CREATE TABLE IF NOT EXISTS {table} (
    queue VARCHAR(255) NOT NULL,
    id VARCHAR(128) NOT NULL,
    seq BIGINT NOT NULL AUTO_INCREMENT,
    message_type VARCHAR(255) NOT NULL,
    payload LONGTEXT NOT NULL,
    status VARCHAR(16) NOT NULL DEFAULT 'scheduled',
    execute_at DATETIME(6) NOT NULL,
    expires_at DATETIME(6) NULL,
    attempts INT NOT NULL DEFAULT 0,
    max_attempts INT NULL,
    retry_delay_ms BIGINT NULL,
    created_at DATETIME(6) NOT NULL,
    updated_at DATETIME(6) NOT NULL,
    processing_started_at DATETIME(6) NULL,
    partition_key VARCHAR(256) NULL,
    metadata LONGTEXT NULL,
    lease_owner VARCHAR(255) NULL,
    lease_expires_at DATETIME(6) NULL,
    last_error LONGTEXT NULL,
    PRIMARY KEY (queue, id),
    UNIQUE KEY (seq),
    KEY {idx_ready} (queue, status, execute_at, seq),
    KEY {idx_leased} (queue, status, lease_expires_at),
    KEY {idx_expiring} (queue, status, expires_at),
    KEY {idx_finished} (status, updated_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
CREATE TABLE IF NOT EXISTS {archive} LIKE {table};
