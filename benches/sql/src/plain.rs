//! The bare loop as three fixed PostgreSQL statements on a pool: a publish, a claim returning
//! each row's key and payload, an acknowledgement of the claimed keys. The layouts the bare loop
//! also runs on (the queue's own table, a split table) differ only in these statements and in
//! the type of their key.

use std::marker::PhantomData;
use std::sync::Arc;

use anyhow::Result;
use mq_core::{IdGenerator, UlidGenerator};
use sqlx::postgres::PgHasArrayType;
use sqlx::{AssertSqlSafe, PgPool, Postgres};

use crate::Rates;
use crate::bare::{Loop, drive};

/// A row key the statements return and take back as a PostgreSQL array.
pub(crate) trait Key:
    for<'r> sqlx::Decode<'r, Postgres>
    + for<'q> sqlx::Encode<'q, Postgres>
    + sqlx::Type<Postgres>
    + PgHasArrayType
    + Send
    + Sync
    + Unpin
    + 'static
{
}

impl<K> Key for K where
    K: for<'r> sqlx::Decode<'r, Postgres>
        + for<'q> sqlx::Encode<'q, Postgres>
        + sqlx::Type<Postgres>
        + PgHasArrayType
        + Send
        + Sync
        + Unpin
        + 'static
{
}

/// The statements of one layout, written once and shared by every task of the loop.
pub(crate) struct PlainLoop<K> {
    pool: PgPool,
    /// Binds the new messages' ids (`$1`, `text[]`) and payloads (`$2`, `text[]`).
    publish: Arc<str>,
    /// Binds the batch size (`$1`); returns each claimed row's key and payload, in that order.
    claim: Arc<str>,
    /// Binds the claimed keys (`$1`, an array of `K`).
    ack: Arc<str>,
    key: PhantomData<fn() -> K>,
}

// By hand: a derive would ask for `K: Clone`.
impl<K> Clone for PlainLoop<K> {
    fn clone(&self) -> Self {
        PlainLoop {
            pool: self.pool.clone(),
            publish: self.publish.clone(),
            claim: self.claim.clone(),
            ack: self.ack.clone(),
            key: PhantomData,
        }
    }
}

impl<K: Key> PlainLoop<K> {
    /// The loop of these statements on `pool`.
    pub(crate) fn new(pool: PgPool, publish: String, claim: String, ack: String) -> Self {
        PlainLoop {
            pool,
            publish: publish.into(),
            claim: claim.into(),
            ack: ack.into(),
            key: PhantomData,
        }
    }

    /// Drives the workload through the loop, then runs `teardown` and closes the pool.
    pub(crate) async fn run(
        self,
        workload: (usize, usize, usize),
        teardown: String,
    ) -> Result<Rates> {
        let rates = drive(self.clone(), workload).await?;
        sqlx::raw_sql(AssertSqlSafe(teardown))
            .execute(&self.pool)
            .await?;
        self.pool.close().await;
        Ok(rates)
    }
}

impl<K: Key> Loop for PlainLoop<K> {
    async fn publish(&self, payloads: &[String]) -> Result<()> {
        let ids: Vec<String> = payloads
            .iter()
            .map(|_| UlidGenerator.next_id().as_str().to_owned())
            .collect();
        sqlx::query(AssertSqlSafe(self.publish.clone()))
            .bind(&ids)
            .bind(payloads)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn claim_and_ack(&self, batch: usize) -> Result<usize> {
        let rows: Vec<(K, sqlx::types::Json<serde_json::Value>)> =
            sqlx::query_as(AssertSqlSafe(self.claim.clone()))
                .bind(i64::try_from(batch)?)
                .fetch_all(&self.pool)
                .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let keys: Vec<K> = rows.into_iter().map(|r| r.0).collect();
        sqlx::query(AssertSqlSafe(self.ack.clone()))
            .bind(&keys)
            .execute(&self.pool)
            .await?;
        Ok(keys.len())
    }
}
