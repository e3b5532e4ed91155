//! The bare loop on a split PostgreSQL layout: claims and acknowledgements touch a narrow table
//! keyed by a bigint (queue, priority, due time, status, lease, attempts, finish time), and a
//! second table keyed the same way holds what a message carries (its text id, type, payload,
//! metadata); the claim reads it by key for the rows it takes. It shows what the queue's row
//! would cost if only the columns a claim and an acknowledgement change sat in the table they
//! rewrite. Indexes as the queue's: the ready index over waiting and running rows (claims write
//! no index entry), finished rows by age, and the message id unique per queue.
//!
//! Acknowledged rows are deleted from both tables, or kept in place and marked executed.

use anyhow::Result;
use sqlx::AssertSqlSafe;

use crate::Rates;
use crate::bare::Ack;
use crate::plain::PlainLoop;

/// The narrow table; `{TABLE}_messages` holds the messages' columns.
const TABLE: &str = "mq_bench_split";

/// Creates the split tables; the loop of plain statements on them, keyed by the bigint.
async fn create(url: &str, concurrency: usize, ack: Ack) -> Result<PlainLoop<i64>> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(concurrency as u32 + 2)
        .connect(url)
        .await?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP TABLE IF EXISTS {TABLE}, {TABLE}_messages;
         CREATE TABLE {TABLE}_messages (seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
           queue varchar(255) NOT NULL, id varchar(128) NOT NULL, message_type varchar(255) NOT NULL,
           payload jsonb NOT NULL, expires_at timestamptz, max_attempts integer, retry_delay_ms bigint,
           created_at timestamptz NOT NULL, partition_key varchar(256), metadata jsonb,
           unique_key varchar(255), unique_window_ms bigint, UNIQUE (queue, id));
         CREATE TABLE {TABLE} (seq bigint PRIMARY KEY, queue varchar(255) NOT NULL,
           priority smallint NOT NULL DEFAULT 0, execute_at timestamptz NOT NULL,
           status varchar(16) NOT NULL, live smallint DEFAULT 1, attempts integer NOT NULL DEFAULT 0,
           lease_owner varchar(255), lease_expires_at timestamptz, processing_started_at timestamptz,
           updated_at timestamptz NOT NULL, last_error text) WITH (fillfactor = 50);
         CREATE INDEX {TABLE}_ready ON {TABLE} (queue, priority DESC, execute_at, seq) WHERE live = 1;
         CREATE INDEX {TABLE}_finished ON {TABLE} (updated_at) WHERE live IS NULL;"
    )))
    .execute(&pool)
    .await?;
    let publish = format!(
        "WITH m AS ( \
           INSERT INTO {TABLE}_messages (queue, id, message_type, payload, created_at) \
           SELECT 'bench', u.id, 'bench', u.p::jsonb, now() FROM unnest($1::text[], $2::text[]) AS u(id, p) \
           RETURNING seq) \
         INSERT INTO {TABLE} (seq, queue, execute_at, status, updated_at) \
         SELECT seq, 'bench', now(), 'scheduled', now() FROM m"
    );
    // The message's id travels with its payload, as a delivery needs it.
    let claim = format!(
        "WITH c AS ( \
           UPDATE {TABLE} SET status = 'processing', lease_owner = 'bench', \
             lease_expires_at = now() + interval '30 seconds', attempts = attempts + 1, \
             processing_started_at = now() \
           WHERE ctid = ANY(ARRAY(SELECT ctid FROM {TABLE} WHERE queue = 'bench' AND live = 1 \
             AND status = 'scheduled' AND execute_at <= now() \
             ORDER BY priority DESC, execute_at, seq LIMIT $1 FOR UPDATE SKIP LOCKED)) \
           RETURNING seq) \
         SELECT c.seq, m.payload, m.id FROM c JOIN {TABLE}_messages m ON m.seq = c.seq"
    );
    let ack_sql = match ack {
        Ack::Delete => format!(
            "WITH h AS (DELETE FROM {TABLE} WHERE seq = ANY($1)) \
             DELETE FROM {TABLE}_messages WHERE seq = ANY($1)"
        ),
        Ack::Keep | Ack::Move => format!(
            "UPDATE {TABLE} SET status = 'executed', live = NULL, lease_expires_at = NULL, \
             updated_at = now() WHERE seq = ANY($1)"
        ),
    };
    Ok(PlainLoop::new(pool, publish, claim, ack_sql))
}

/// Publishes, claims and acknowledges the workload on the split tables at `url`; `ack` is
/// [`Ack::Delete`] or [`Ack::Keep`] (a move keeps rows in place here).
pub(crate) async fn bench_split_table(
    url: &str,
    workload: (usize, usize, usize),
    ack: Ack,
) -> Result<Rates> {
    create(url, workload.2, ack)
        .await?
        .run(
            workload,
            format!("DROP TABLE IF EXISTS {TABLE}, {TABLE}_messages"),
        )
        .await
}
