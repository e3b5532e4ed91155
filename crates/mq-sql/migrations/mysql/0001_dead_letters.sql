-- Dead letters on MySQL/MariaDB, version 1. {table} is the validated table name.
-- Times are Unix milliseconds; `message` is the message's JSON text, `error` the error chain as a
-- JSON array and `error_text` its joined text (for searches).
CREATE TABLE IF NOT EXISTS {table} (
    id VARCHAR(26) NOT NULL PRIMARY KEY,
    queue VARCHAR(255) NOT NULL,
    message_id VARCHAR(128) NOT NULL,
    message_type VARCHAR(255) NOT NULL,
    message LONGTEXT NOT NULL,
    backend VARCHAR(64) NOT NULL,
    shard_id VARCHAR(128) NULL,
    sequence_number VARCHAR(128) NULL,
    error LONGTEXT NOT NULL,
    error_text LONGTEXT NOT NULL,
    exhausted BIGINT NOT NULL,
    attempts BIGINT NOT NULL,
    failures BIGINT NOT NULL,
    first_failed_at BIGINT NOT NULL,
    last_failed_at BIGINT NOT NULL,
    consumer_id TEXT NOT NULL,
    replay_state VARCHAR(16) NOT NULL DEFAULT 'none',
    replay_generation BIGINT NOT NULL DEFAULT 0,
    replay_message_id VARCHAR(128) NULL,
    replay_target VARCHAR(255) NULL,
    replay_started_at BIGINT NULL,
    replayed_at BIGINT NULL,
    UNIQUE KEY {idx_message} (queue, message_id),
    KEY {idx_failed} (last_failed_at),
    KEY {idx_type} (message_type)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
