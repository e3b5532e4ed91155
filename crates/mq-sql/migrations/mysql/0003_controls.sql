-- mq-sql MySQL/MariaDB schema, version 3: queue controls. Priorities (claimed higher first),
-- unique keys (no partial indexes here: the generated column `unique_held` is the key while the
-- message waits or runs and NULL otherwise, under a unique index; a key with a window is looked
-- up among finished messages on publish), and the pause table (a row per paused queue, checked
-- by every claim). The archive gets the same columns, `unique_held` as a plain one.
ALTER TABLE {table}
    ADD COLUMN priority SMALLINT NOT NULL DEFAULT 0,
    ADD COLUMN unique_key VARCHAR(255) NULL,
    ADD COLUMN unique_window_ms BIGINT NULL,
    ADD COLUMN unique_held VARCHAR(255) AS (CASE WHEN status IN ('scheduled', 'processing') THEN unique_key END) STORED,
    DROP INDEX {idx_ready},
    ADD KEY {idx_ready} (queue, status, priority DESC, execute_at, seq),
    ADD UNIQUE KEY {idx_unique} (queue, unique_held),
    ADD KEY {idx_keys} (queue, unique_key);
ALTER TABLE {archive}
    ADD COLUMN priority SMALLINT NOT NULL DEFAULT 0,
    ADD COLUMN unique_key VARCHAR(255) NULL,
    ADD COLUMN unique_window_ms BIGINT NULL,
    ADD COLUMN unique_held VARCHAR(255) NULL;
CREATE TABLE IF NOT EXISTS {paused} (
    queue VARCHAR(255) NOT NULL PRIMARY KEY,
    paused_at DATETIME(6) NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
