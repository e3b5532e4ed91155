-- mq-sql PostgreSQL schema, version 1.
-- Placeholders in braces are replaced by the validated table name and names derived from it.
CREATE TABLE IF NOT EXISTS {table} (
    queue varchar(255) NOT NULL,
    id varchar(128) NOT NULL,
    seq bigint GENERATED ALWAYS AS IDENTITY,
    message_type varchar(255) NOT NULL,
    payload jsonb NOT NULL,
    status varchar(16) NOT NULL DEFAULT 'scheduled',
    execute_at timestamptz NOT NULL,
    expires_at timestamptz,
    attempts integer NOT NULL DEFAULT 0,
    max_attempts integer,
    retry_delay_ms bigint,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    processing_started_at timestamptz,
    partition_key varchar(256),
    metadata jsonb,
    lease_owner varchar(255),
    lease_expires_at timestamptz,
    last_error text,
    PRIMARY KEY (queue, id)
) WITH (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 20000,
    autovacuum_vacuum_cost_delay = 0,
    autovacuum_analyze_scale_factor = 0.02
);
-- Ready messages, in claim order.
CREATE INDEX IF NOT EXISTS {idx_ready} ON {table} (queue, execute_at, seq) WHERE status = 'scheduled';
-- Held messages, to find expired leases (crash recovery).
CREATE INDEX IF NOT EXISTS {idx_leased} ON {table} (queue, lease_expires_at) WHERE status = 'processing';
-- Scheduled messages with a deadline, to mark them expired.
CREATE INDEX IF NOT EXISTS {idx_expiring} ON {table} (queue, expires_at) WHERE status = 'scheduled' AND expires_at IS NOT NULL;
-- Finished messages, for retention.
CREATE INDEX IF NOT EXISTS {idx_finished} ON {table} (updated_at) WHERE status IN ('executed', 'failed', 'expired', 'dead_lettered');
-- Where retention moves rows when archiving is on.
CREATE TABLE IF NOT EXISTS {archive} (LIKE {table} INCLUDING DEFAULTS);
