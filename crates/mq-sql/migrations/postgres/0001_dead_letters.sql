-- Dead letters on PostgreSQL, version 1. {table} is the validated table name.
-- Times are Unix milliseconds; `message` is the message's JSON text, `error` the error chain as a
-- JSON array and `error_text` its joined text (for searches).
CREATE TABLE IF NOT EXISTS {table} (
    id varchar(26) PRIMARY KEY,
    queue varchar(255) NOT NULL,
    message_id varchar(128) NOT NULL,
    message_type varchar(255) NOT NULL,
    message text NOT NULL,
    backend varchar(64) NOT NULL,
    shard_id varchar(128),
    sequence_number varchar(128),
    error text NOT NULL,
    error_text text NOT NULL,
    exhausted bigint NOT NULL,
    attempts bigint NOT NULL,
    failures bigint NOT NULL,
    first_failed_at bigint NOT NULL,
    last_failed_at bigint NOT NULL,
    consumer_id text NOT NULL,
    replay_state varchar(16) NOT NULL DEFAULT 'none',
    replay_generation bigint NOT NULL DEFAULT 0,
    replay_message_id varchar(128),
    replay_target varchar(255),
    replay_started_at bigint,
    replayed_at bigint,
    UNIQUE (queue, message_id)
);
CREATE INDEX IF NOT EXISTS {idx_failed} ON {table} (last_failed_at);
CREATE INDEX IF NOT EXISTS {idx_type} ON {table} (message_type);
