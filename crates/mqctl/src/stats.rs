//! `mqctl queue stats`: messages by status, the age of the oldest ready message and expired
//! leases per queue, read through the queue store's own `queue_stats` (read-only: nothing is
//! created, and a missing table or collection is an error).

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use mq::sql::{SqlOptions, SqlStore};
use mq::{MongoOptions, MongoQueue, QueueName, Status};
use serde::Serialize;

use crate::Global;
use crate::dlq::{CONNECT_TIMEOUT, Scheme, connect_pool, redact, scheme};
use crate::output::{json, table};

/// Where the queues are.
#[derive(Debug, Args)]
pub(crate) struct StatsArgs {
    /// The queue database: a postgres://, mysql://, sqlite: or mongodb:// URL [default: $DATABASE_URL, then $MONGODB_URI].
    #[arg(long, env = "MQ_QUEUE_URL")]
    url: Option<String>,
    /// The table (SQL) or collection (MongoDB) of the messages.
    #[arg(long, default_value = "mq_messages")]
    table: String,
    /// The MongoDB database of the queues.
    #[arg(long, default_value = "mq", env = "MQ_MONGO_DATABASE")]
    mongo_database: String,
    /// Only this queue (an error when it holds no messages).
    #[arg(long)]
    queue: Option<String>,
}

/// One queue's numbers, as printed.
#[derive(Debug, Serialize)]
struct Row {
    queue: String,
    /// Messages per status.
    counts: BTreeMap<String, u64>,
    total: u64,
    /// Age of the oldest message that is ready (scheduled, due) and not yet claimed.
    oldest_ready_age_ms: Option<u64>,
    /// Messages in processing whose lease has expired (a crashed or stuck consumer).
    expired_leases: u64,
}

impl From<mq::QueueStats> for Row {
    fn from(s: mq::QueueStats) -> Self {
        Row {
            queue: s.queue.to_string(),
            total: s.total(),
            counts: s
                .counts
                .iter()
                .map(|(status, n)| (status.to_string(), *n))
                .collect(),
            oldest_ready_age_ms: s
                .oldest_ready_age
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            expired_leases: s.expired_leases,
        }
    }
}

pub(crate) async fn run(args: StatsArgs, global: Global) -> anyhow::Result<ExitCode> {
    let url = match args.url.clone().filter(|u| !u.is_empty()) {
        Some(u) => u,
        None => ["DATABASE_URL", "MONGODB_URI"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
            .context(
                "no queue database: pass --url or set MQ_QUEUE_URL, DATABASE_URL or MONGODB_URI",
            )?,
    };
    // The library's own rules, before anything is sent to a server.
    let queue = args.queue.as_deref().map(QueueName::new).transpose()?;
    let ctx = || format!("reading queue stats from {}", redact(&url));
    let sql = || {
        SqlOptions::default()
            .table(&args.table)
            .create_schema(false)
            .notify(false)
    };
    let q = queue.as_ref();
    // One arm per SQL database: the store type differs, the steps do not.
    macro_rules! sql_stats {
        ($db:ty) => {{
            let pool = connect_pool(&url).await.with_context(ctx)?;
            // Read as the table is: a table the workers have not migrated yet has every
            // column these numbers need.
            SqlStore::<$db>::read_queue_stats(pool, &sql(), q)
                .await
                .with_context(ctx)?
        }};
    }
    let stats = match scheme(&url)? {
        Scheme::Postgres => sql_stats!(sqlx::Postgres),
        Scheme::MySql => sql_stats!(sqlx::MySql),
        Scheme::Sqlite => sql_stats!(sqlx::Sqlite),
        Scheme::Mongo => {
            let options = MongoOptions::default()
                .database(&args.mongo_database)
                .collection(&args.table)
                .create_schema(false)
                .change_stream(false)
                .server_selection_timeout(CONNECT_TIMEOUT)
                .connect_timeout(CONNECT_TIMEOUT);
            let queues = MongoQueue::connect(&url, options).await.with_context(ctx)?;
            queues.queue_stats(q).await.with_context(ctx)?
        }
    };
    if let Some(name) = &queue
        && stats.iter().all(|s| s.total() == 0)
    {
        anyhow::bail!(
            "queue {name:?} has no messages in {} (is the name right?)",
            args.table
        );
    }
    let rows: Vec<Row> = stats.into_iter().map(Row::from).collect();
    if global.json {
        json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    let statuses = [
        Status::Scheduled,
        Status::Processing,
        Status::Executed,
        Status::Failed,
        Status::DeadLettered,
        Status::Expired,
        Status::Cancelled,
    ];
    let upper: Vec<String> = statuses
        .iter()
        .map(|s| s.to_string().to_uppercase())
        .collect();
    let mut headers = vec!["QUEUE"];
    headers.extend(upper.iter().map(String::as_str));
    headers.extend(["TOTAL", "OLDEST READY", "EXPIRED LEASES"]);
    let lines: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut line = vec![r.queue.clone()];
            line.extend(statuses.iter().map(|st| {
                r.counts
                    .get(&st.to_string())
                    .copied()
                    .unwrap_or(0)
                    .to_string()
            }));
            line.push(r.total.to_string());
            line.push(r.oldest_ready_age_ms.map_or("-".into(), age));
            line.push(r.expired_leases.to_string());
            line
        })
        .collect();
    table(&headers, &lines);
    if lines.is_empty() {
        println!("no messages");
    }
    Ok(ExitCode::SUCCESS)
}

fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        ..60 => format!("{}.{:01}s", s, (ms % 1000) / 100),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86_400, (s % 86_400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_well() {
        assert_eq!(age(1500), "1.5s");
        assert_eq!(age(125_000), "2m5s");
        assert_eq!(age(7_500_000), "2h5m");
        assert_eq!(age(90_000_000), "1d1h");
    }
}
