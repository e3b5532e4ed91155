//! Completing a claimed message inside the handler's own transaction: the handler's writes to
//! the same database and the acknowledgement commit together or not at all.

use std::collections::HashMap;

use mq_core::backend::{Claim, QueueStore};
use mq_core::{HandlerContext, Message};
use sqlx::{Executor, QueryBuilder};

use crate::dialect::{CHUNK, Dialect, ReadRow, Sql};
use crate::error::{Error, backend};
use crate::queue::SqlQueue;
use crate::remembered;
use crate::store::SqlStore;

/// The operation named in errors.
const OP: &str = "complete in transaction";

impl<DB: Dialect> SqlStore<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    QueryBuilder<DB>: Sql,
{
    /// Completes `message`, delivered to the handler that got `ctx`, on the handler's own
    /// connection `conn` (usually `&mut *tx` of an open transaction): the message becomes
    /// executed (or, with [`SqlOptions::delete_on_ack`](crate::SqlOptions::delete_on_ack), is
    /// deleted) when the caller commits, together with whatever else the transaction wrote, and
    /// stays held by the handler if it rolls back. See
    /// [`SqlQueue::complete_in_tx`] for the whole contract.
    ///
    /// # Errors
    ///
    /// [`Error::NotHeld`] (as the source of a backend error) when the claim no longer holds the
    /// message; the database's error otherwise. Either way the caller must roll back.
    pub async fn complete_in_tx(
        &self,
        conn: &mut DB::Connection,
        ctx: &HandlerContext,
        message: &Message,
    ) -> mq_core::Result<()> {
        let t = &self.names.table;
        let now = DB::statement_now();
        let owner = ctx.consumer_id();
        // Under delete_on_ack a message whose unique key has a window is kept (as executed) so
        // the window can be read, as the consumer's own acknowledgement does.
        let delete = self.options.get_delete_on_ack() && message.unique_window.is_none();
        let mut q = QueryBuilder::<DB>::new(if delete {
            format!("DELETE FROM {t}")
        } else {
            format!(
                "UPDATE {t} SET status = 'executed', lease_expires_at = NULL, updated_at = {now}"
            )
        });
        // The fence of every completion: this claim (owner and attempt), still running, lease
        // not expired. The row stays locked until the transaction ends, so no other consumer
        // can claim the message between this statement and the commit.
        q.raw(" WHERE queue = ");
        q.text(message.queue.as_str().to_owned());
        q.raw(" AND id = ");
        q.text(message.id.as_str().to_owned());
        q.raw(" AND attempts = ");
        q.int4(i32::try_from(message.attempts).unwrap_or(i32::MAX));
        q.raw(" AND status = 'processing' AND lease_owner = ");
        q.text(owner.to_owned());
        q.raw(&format!(" AND lease_expires_at > {now}"));
        let done = q.build().execute(&mut *conn).await.map_err(backend(OP))?;
        if DB::rows_affected(&done) == 0 {
            let reason = why_not_held::<DB>(conn, t, message, owner).await?;
            return Err(Error::NotHeld {
                queue: message.queue.as_str().to_owned(),
                id: message.id.as_str().to_owned(),
                reason,
            }
            .into());
        }
        let window = self.options.get_idempotency_window();
        if delete && !window.is_zero() {
            // The id stays taken for the idempotency window, written in the same transaction.
            let ids = [message.id.as_str().to_owned()];
            remembered::remember_statement::<DB>(&self.names, &message.queue, &ids, window)
                .build()
                .execute(&mut *conn)
                .await
                .map_err(backend(OP))?;
        }
        ctx.mark_completed(message.id.clone());
        Ok(())
    }
}

/// Of `claims` by `owner`, which a handler marked completed but whose consumer's completion
/// was refused, the ones their own delivery completed: the row is executed under the same
/// consumer and attempt, or is gone (deleted on acknowledgement). A row still waiting, or held
/// or finished under another claim, means the handler's transaction rolled back and the lease
/// was lost afterwards.
pub(crate) async fn completed_by_delivery<DB: Dialect>(
    pool: &sqlx::Pool<DB>,
    table: &str,
    queue: &mq_core::QueueName,
    owner: &str,
    claims: &[Claim],
) -> mq_core::Result<Vec<Claim>>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    QueryBuilder<DB>: Sql,
{
    const CHECK: &str = "check completions";
    let mut stored: HashMap<String, (String, Option<String>, i64)> = HashMap::new();
    for chunk in claims.chunks(CHUNK) {
        let mut q = QueryBuilder::<DB>::new(format!(
            "SELECT id, status, lease_owner, attempts FROM {table} WHERE queue = "
        ));
        q.text(queue.as_str().to_owned());
        q.raw(" AND id IN (");
        for (i, c) in chunk.iter().enumerate() {
            if i > 0 {
                q.raw(", ");
            }
            q.text(c.id.as_str().to_owned());
        }
        q.raw(")");
        for row in q.build().fetch_all(pool).await.map_err(backend(CHECK))? {
            let id = row.text("id").map_err(backend(CHECK))?;
            let status = row.text("status").map_err(backend(CHECK))?;
            let holder = row.opt_text("lease_owner").map_err(backend(CHECK))?;
            let attempts = row
                .opt_int4("attempts")
                .map_err(backend(CHECK))?
                .unwrap_or(0);
            stored.insert(id, (status, holder, attempts));
        }
    }
    Ok(claims
        .iter()
        .filter(|c| match stored.get(c.id.as_str()) {
            None => true,
            Some((status, holder, attempts)) => {
                status == "executed"
                    && holder.as_deref() == Some(owner)
                    && *attempts == i64::from(c.attempt)
            }
        })
        .cloned()
        .collect())
}

impl<DB: Dialect> SqlQueue<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    QueryBuilder<DB>: Sql,
    SqlStore<DB>: QueueStore,
{
    /// Completes `message` inside the handler's own transaction: the handler's writes to this
    /// database and the acknowledgement of the message commit together or not at all, so each
    /// message's effects are applied exactly once.
    ///
    /// Call it from the handler with the `ctx` it was given, on the connection of a transaction
    /// that also holds the handler's writes (`&mut *tx`), then commit. The statement is fenced
    /// like the consumer's own acknowledgement (this delivery's consumer and attempt, still
    /// running, lease not expired) and locks the message's row until the transaction ends, so
    /// no other consumer can take the message before the commit. The message is marked
    /// executed, or deleted under [`SqlOptions::delete_on_ack`](crate::SqlOptions::delete_on_ack)
    /// (kept as executed while its unique key has a window; its id remembered for the
    /// idempotency window, in the same transaction).
    ///
    /// After the handler returns, the consumer's own completion (fenced the same way) finds the
    /// message completed and changes nothing; the message counts as acknowledged whatever the
    /// handler returned. If the transaction rolled back instead, the message is still held and
    /// the handler's outcome settles it as usual (return an error to have it retried).
    ///
    /// Keep the transaction short: while it holds the row, the consumer cannot renew the
    /// message's lease. On SQLite, begin the transaction with `BEGIN IMMEDIATE`
    /// (`pool.begin_with("BEGIN IMMEDIATE")`) so it takes the write lock at once.
    ///
    /// # Errors
    ///
    /// When the claim no longer holds the message (its lease expired and another consumer
    /// claimed it, it was cancelled, or it is completed already) nothing is changed and the
    /// error is a backend error whose source is [`Error::NotHeld`], naming the message and why.
    /// A database error is returned as it is. Either way, roll the transaction back so none of
    /// its writes commit.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(queue: mq_sql::PgQueue, pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::Arc;
    /// use mq_core::{handler_fn, Batch, ConsumerOptions, HandlerContext, MessageQueue, QueueName};
    ///
    /// let orders = QueueName::new("orders")?;
    /// let (q, db) = (queue.clone(), pool.clone());
    /// let handler = handler_fn(move |batch: Batch, ctx: HandlerContext| {
    ///     let (q, db) = (q.clone(), db.clone());
    ///     async move {
    ///         let mut tx = db.begin().await?;
    ///         for m in batch.iter() {
    ///             sqlx::query("INSERT INTO shipments (order_id) VALUES ($1)")
    ///                 .bind(m.id.as_str())
    ///                 .execute(&mut *tx)
    ///                 .await?;
    ///             // Fails, and nothing commits, if this delivery lost the message.
    ///             q.complete_in_tx(&mut tx, &ctx, m).await?;
    ///         }
    ///         tx.commit().await?;
    ///         Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    ///     }
    /// });
    /// let consumer = queue.consume(&orders, Arc::new(handler), ConsumerOptions::default()).await?;
    /// # let _ = consumer;
    /// # Ok(()) }
    /// ```
    pub async fn complete_in_tx(
        &self,
        conn: &mut DB::Connection,
        ctx: &HandlerContext,
        message: &Message,
    ) -> mq_core::Result<()> {
        self.store().complete_in_tx(conn, ctx, message).await
    }
}

/// Why the claim of `message` by `owner` no longer holds it, read on the same connection.
async fn why_not_held<DB: Dialect>(
    conn: &mut DB::Connection,
    table: &str,
    message: &Message,
    owner: &str,
) -> mq_core::Result<String>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    QueryBuilder<DB>: Sql,
{
    let mut q = QueryBuilder::<DB>::new(format!(
        "SELECT status, lease_owner, attempts, lease_expires_at FROM {table} WHERE queue = "
    ));
    q.text(message.queue.as_str().to_owned());
    q.raw(" AND id = ");
    q.text(message.id.as_str().to_owned());
    let row = q
        .build()
        .fetch_optional(&mut *conn)
        .await
        .map_err(backend(OP))?;
    let Some(row) = row else {
        return Ok("it is no longer stored (completed and deleted, or purged)".to_owned());
    };
    let status = row.text("status").map_err(backend(OP))?;
    let holder = row.opt_text("lease_owner").map_err(backend(OP))?;
    let attempts = row.opt_int4("attempts").map_err(backend(OP))?.unwrap_or(0);
    let expires = row.opt_time("lease_expires_at").map_err(backend(OP))?;
    let ours = holder.as_deref() == Some(owner) && attempts == i64::from(message.attempts);
    Ok(match status.as_str() {
        "processing" if !ours => format!(
            "its lease expired and consumer {} claimed it again (attempt {attempts})",
            holder.as_deref().unwrap_or("(none)")
        ),
        "processing" => match expires {
            Some(at) => format!("the lease of consumer {owner} expired at {at}"),
            None => format!("the lease of consumer {owner} expired"),
        },
        "scheduled" => "its lease expired and it waits to be delivered again".to_owned(),
        "cancelled" => "it was cancelled".to_owned(),
        "executed" => "it is completed already".to_owned(),
        other => format!("it is {other} now"),
    })
}
