//! `mqctl queue stats`: messages by status, oldest ready message age and expired leases per
//! queue, read straight from the SQL table or MongoDB collection of the queues (read-only).

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Args;
use futures::TryStreamExt;
use mongodb::bson::{self, Bson, Document, doc};
use serde::Serialize;
use sqlx::Row;

use crate::Global;
use crate::dlq::{Scheme, redact, scheme};
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
    /// Only this queue.
    #[arg(long)]
    queue: Option<String>,
}

/// One queue's numbers.
#[derive(Debug, Default, Serialize)]
struct QueueStats {
    queue: String,
    /// Messages per status.
    counts: BTreeMap<String, u64>,
    total: u64,
    /// Age of the oldest message that is ready (scheduled, due) and not yet claimed.
    oldest_ready_age_ms: Option<i64>,
    /// Messages in processing whose lease has expired (a crashed or stuck consumer).
    expired_leases: u64,
}

type Stats = BTreeMap<String, QueueStats>;

fn entry<'a>(stats: &'a mut Stats, queue: &str) -> &'a mut QueueStats {
    stats.entry(queue.to_owned()).or_insert_with(|| QueueStats {
        queue: queue.to_owned(),
        ..QueueStats::default()
    })
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
    let kind = scheme(&url)?;
    if kind != Scheme::Mongo && !valid_table(&args.table) {
        anyhow::bail!(
            "--table {:?}: use ASCII letters, digits and underscores, not starting with a digit",
            args.table
        );
    }
    let now = Utc::now();
    let ctx = || format!("reading queue stats from {}", redact(&url));
    let mut stats = match kind {
        Scheme::Postgres => pg(&url, &args.table, now).await.with_context(ctx)?,
        Scheme::MySql => mysql(&url, &args.table, now).await.with_context(ctx)?,
        Scheme::Sqlite => sqlite(&url, &args.table, now).await.with_context(ctx)?,
        Scheme::Mongo => mongo(&url, &args.mongo_database, &args.table, now)
            .await
            .with_context(ctx)?,
    };
    if let Some(q) = &args.queue {
        stats.retain(|name, _| name == q);
    }
    for s in stats.values_mut() {
        s.total = s.counts.values().sum();
    }
    let stats: Vec<QueueStats> = stats.into_values().collect();
    if global.json {
        json(&stats)?;
        return Ok(ExitCode::SUCCESS);
    }
    let statuses = [
        "scheduled",
        "processing",
        "executed",
        "failed",
        "dead_lettered",
        "expired",
    ];
    let upper: Vec<String> = statuses.iter().map(|s| s.to_uppercase()).collect();
    let mut headers = vec!["QUEUE"];
    headers.extend(upper.iter().map(String::as_str));
    headers.extend(["TOTAL", "OLDEST READY", "EXPIRED LEASES"]);
    let rows: Vec<Vec<String>> = stats
        .iter()
        .map(|s| {
            let mut row = vec![s.queue.clone()];
            row.extend(
                statuses
                    .iter()
                    .map(|st| s.counts.get(*st).copied().unwrap_or(0).to_string()),
            );
            row.push(s.total.to_string());
            row.push(s.oldest_ready_age_ms.map_or("-".into(), age));
            row.push(s.expired_leases.to_string());
            row
        })
        .collect();
    table(&headers, &rows);
    if rows.is_empty() {
        println!("no messages");
    }
    Ok(ExitCode::SUCCESS)
}

fn age(ms: i64) -> String {
    let s = ms / 1000;
    match s {
        ..60 => format!("{}.{:01}s", s, (ms % 1000) / 100),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86_400, (s % 86_400) / 3600),
    }
}

fn valid_table(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn sql_texts(t: &str) -> [String; 3] {
    [
        format!("SELECT queue, status, COUNT(*) AS n FROM {t} GROUP BY queue, status"),
        format!(
            "SELECT queue, MIN(execute_at) AS oldest FROM {t} \
             WHERE status = 'scheduled' AND execute_at <= $1 GROUP BY queue"
        ),
        format!(
            "SELECT queue, COUNT(*) AS n FROM {t} \
             WHERE status = 'processing' AND lease_expires_at < $1 GROUP BY queue"
        ),
    ]
}

async fn pg(url: &str, t: &str, now: DateTime<Utc>) -> anyhow::Result<Stats> {
    let pool = sqlx::PgPool::connect(url).await?;
    let [counts, oldest, expired] = sql_texts(t);
    let mut stats = Stats::new();
    for row in sqlx::query(sqlx::AssertSqlSafe(counts))
        .fetch_all(&pool)
        .await?
    {
        let s = entry(&mut stats, row.try_get("queue")?);
        s.counts
            .insert(row.try_get("status")?, row.try_get::<i64, _>("n")? as u64);
    }
    for row in sqlx::query(sqlx::AssertSqlSafe(oldest))
        .bind(now)
        .fetch_all(&pool)
        .await?
    {
        let at: DateTime<Utc> = row.try_get("oldest")?;
        entry(&mut stats, row.try_get("queue")?).oldest_ready_age_ms =
            Some((now - at).num_milliseconds());
    }
    for row in sqlx::query(sqlx::AssertSqlSafe(expired))
        .bind(now)
        .fetch_all(&pool)
        .await?
    {
        entry(&mut stats, row.try_get("queue")?).expired_leases =
            row.try_get::<i64, _>("n")? as u64;
    }
    pool.close().await;
    Ok(stats)
}

async fn mysql(url: &str, t: &str, now: DateTime<Utc>) -> anyhow::Result<Stats> {
    let pool = sqlx::MySqlPool::connect(url).await?;
    let [counts, oldest, expired] = sql_texts(t).map(|s| s.replace("$1", "?"));
    let mut stats = Stats::new();
    for row in sqlx::query(sqlx::AssertSqlSafe(counts))
        .fetch_all(&pool)
        .await?
    {
        let s = entry(&mut stats, row.try_get("queue")?);
        s.counts
            .insert(row.try_get("status")?, row.try_get::<i64, _>("n")? as u64);
    }
    for row in sqlx::query(sqlx::AssertSqlSafe(oldest))
        .bind(now)
        .fetch_all(&pool)
        .await?
    {
        let at: DateTime<Utc> = row.try_get("oldest")?;
        entry(&mut stats, row.try_get("queue")?).oldest_ready_age_ms =
            Some((now - at).num_milliseconds());
    }
    for row in sqlx::query(sqlx::AssertSqlSafe(expired))
        .bind(now)
        .fetch_all(&pool)
        .await?
    {
        entry(&mut stats, row.try_get("queue")?).expired_leases =
            row.try_get::<i64, _>("n")? as u64;
    }
    pool.close().await;
    Ok(stats)
}

/// mq-sql keeps SQLite times as Unix microseconds.
async fn sqlite(url: &str, t: &str, now: DateTime<Utc>) -> anyhow::Result<Stats> {
    let pool = sqlx::SqlitePool::connect(url).await?;
    let [counts, oldest, expired] = sql_texts(t);
    let now_us = now.timestamp_micros();
    let mut stats = Stats::new();
    for row in sqlx::query(sqlx::AssertSqlSafe(counts))
        .fetch_all(&pool)
        .await?
    {
        let s = entry(&mut stats, row.try_get("queue")?);
        s.counts
            .insert(row.try_get("status")?, row.try_get::<i64, _>("n")? as u64);
    }
    for row in sqlx::query(sqlx::AssertSqlSafe(oldest))
        .bind(now_us)
        .fetch_all(&pool)
        .await?
    {
        let at: i64 = row.try_get("oldest")?;
        entry(&mut stats, row.try_get("queue")?).oldest_ready_age_ms = Some((now_us - at) / 1000);
    }
    for row in sqlx::query(sqlx::AssertSqlSafe(expired))
        .bind(now_us)
        .fetch_all(&pool)
        .await?
    {
        entry(&mut stats, row.try_get("queue")?).expired_leases =
            row.try_get::<i64, _>("n")? as u64;
    }
    pool.close().await;
    Ok(stats)
}

fn int(b: Option<&Bson>) -> u64 {
    match b {
        Some(Bson::Int32(n)) => u64::try_from(*n).unwrap_or(0),
        Some(Bson::Int64(n)) => u64::try_from(*n).unwrap_or(0),
        Some(Bson::Double(n)) => *n as u64,
        _ => 0,
    }
}

async fn mongo(uri: &str, db: &str, coll: &str, now: DateTime<Utc>) -> anyhow::Result<Stats> {
    let client = mongodb::Client::with_uri_str(uri).await?;
    let c = client.database(db).collection::<Document>(coll);
    let now_b = bson::DateTime::from_millis(now.timestamp_millis());
    let mut stats = Stats::new();
    let counts: Vec<Document> = c
        .aggregate([doc! { "$group": {
        "_id": { "q": "$queue", "s": "$status" }, "n": { "$sum": 1 } } }])
        .await?
        .try_collect()
        .await?;
    for d in counts {
        let key = d.get_document("_id")?;
        let s = entry(&mut stats, key.get_str("q").unwrap_or("?"));
        s.counts
            .insert(key.get_str("s").unwrap_or("?").to_owned(), int(d.get("n")));
    }
    let oldest: Vec<Document> = c
        .aggregate([
            doc! { "$match": { "status": "scheduled", "execute_at": { "$lte": now_b } } },
            doc! { "$group": { "_id": "$queue", "oldest": { "$min": "$execute_at" } } },
        ])
        .await?
        .try_collect()
        .await?;
    for d in oldest {
        if let (Ok(q), Ok(at)) = (d.get_str("_id"), d.get_datetime("oldest")) {
            entry(&mut stats, q).oldest_ready_age_ms =
                Some(now.timestamp_millis() - at.timestamp_millis());
        }
    }
    let expired: Vec<Document> = c
        .aggregate([
            doc! { "$match": { "status": "processing", "lease_expires_at": { "$lt": now_b } } },
            doc! { "$group": { "_id": "$queue", "n": { "$sum": 1 } } },
        ])
        .await?
        .try_collect()
        .await?;
    for d in expired {
        if let Ok(q) = d.get_str("_id") {
            entry(&mut stats, q).expired_leases = int(d.get("n"));
        }
    }
    Ok(stats)
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
        assert!(valid_table("mq_messages"));
        assert!(!valid_table("x;drop"));
    }
}
