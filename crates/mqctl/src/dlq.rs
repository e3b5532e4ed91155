//! `mqctl dlq`: list, show, replay and purge dead letters.

use std::io::IsTerminal;
use std::num::NonZeroU32;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mq::dlq::{ReplayOptions, ReplayReport, Replayer};
use mq::mongo::MongoDeadLetterStore;
use mq::sql::{MySqlDeadLetterStore, PgDeadLetterStore, SqliteDeadLetterStore};
use mq::{CommonOptions, MessageQueue, MongoOptions, MongoQueue, QueueName, SqlOptions};
use mq::{DeadLetterEntry, DeadLetterFilter, DeadLetterStore, EntryId};

use crate::Global;
use crate::args::FilterArgs;
use crate::output::{cut, json, table};

/// Where the dead letters are, and what to do with them.
#[derive(Debug, Args)]
pub(crate) struct DlqArgs {
    /// The dead-letter store: a postgres://, mysql://, sqlite: or mongodb:// URL [default: $DATABASE_URL, then $MONGODB_URI].
    #[arg(
        long = "url",
        visible_alias = "store-url",
        env = "MQ_DLQ_URL",
        global = true
    )]
    store_url: Option<String>,
    /// The table (SQL) or collection (MongoDB) holding the dead letters.
    #[arg(long, default_value = "mq_dead_letters", global = true)]
    table: String,
    /// The MongoDB database of the dead letters (and of the queues, for replay).
    #[arg(long, default_value = "mq", env = "MQ_MONGO_DATABASE", global = true)]
    mongo_database: String,
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// List dead letters (oldest first) with a count of all that match.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many entries.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only entries after this entry id (the next page).
        #[arg(long)]
        after: Option<String>,
    },
    /// Show one dead letter in full: message, origin, error chain, replay state, and the original
    /// bytes of a record when they are kept (as text when UTF-8; base64 with --json).
    Show {
        /// The entry id (a ULID, as `list` prints it).
        id: String,
    },
    /// Publish dead letters again, idempotently: an interrupted replay can simply be run again.
    Replay(ReplayArgs),
    /// Delete dead letters (asks for confirmation unless --yes).
    Purge {
        #[command(flatten)]
        filter: FilterArgs,
        /// Allow purging with no filter at all (every entry).
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Args)]
struct ReplayArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// Publish every selected entry to this queue instead of the queue it failed in.
    #[arg(long = "to")]
    to: Option<String>,
    /// Show what would be replayed; mark and publish nothing.
    #[arg(long)]
    dry_run: bool,
    /// At most this many messages per second.
    #[arg(long)]
    rate: Option<u32>,
    /// Entries read and published per batch.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Replay entries that were already replayed once more (a new copy under a new id).
    #[arg(long)]
    include_replayed: bool,
    /// The queue backend to publish to: a postgres://, mysql://, sqlite: or mongodb:// URL [default: the store URL].
    #[arg(long, env = "MQ_QUEUE_URL")]
    queue_url: Option<String>,
    /// The queue table (SQL) or collection (MongoDB).
    #[arg(long, default_value = "mq_messages")]
    queue_table: String,
}

pub(crate) async fn run(args: DlqArgs, global: Global) -> anyhow::Result<ExitCode> {
    let url = store_url(args.store_url.as_deref())?;
    let store = open_store(&url, &args.table, &args.mongo_database).await?;
    let now = Utc::now();
    match args.command {
        DlqCommand::List {
            filter,
            limit,
            after,
        } => {
            let mut f = filter.to_filter(now)?;
            let total = store.count(&f).await?;
            f = f.limit(limit);
            if let Some(a) = after {
                f = f.after(a.parse::<EntryId>().context("--after")?);
            }
            let entries = store.list(&f).await?;
            if global.json {
                json(&serde_json::json!({ "total": total, "entries": entries }))?;
            } else {
                list_table(&entries);
                println!("{} shown, {total} matching", entries.len());
            }
        }
        DlqCommand::Show { id } => {
            let id: EntryId = id.parse()?;
            let Some(entry) = store.get(&id).await? else {
                anyhow::bail!("no dead letter {id} in the store; `mqctl dlq list` shows the ids");
            };
            if global.json {
                json(&entry)?;
            } else {
                show(&entry)?;
            }
        }
        DlqCommand::Purge { filter, all } => {
            let f = filter.to_filter(now)?;
            if f == DeadLetterFilter::default() && !all {
                anyhow::bail!(
                    "refusing to purge every dead letter without --all; give a filter (--queue, --type, --since, ...) or pass --all"
                );
            }
            let n = store.count(&f).await?;
            if n == 0 {
                report_purged(global, 0)?;
                return Ok(ExitCode::SUCCESS);
            }
            if !global.confirm(&format!("purge {n} dead letter(s)?"))? {
                eprintln!("nothing purged");
                return Ok(ExitCode::from(1));
            }
            let purged = store.purge(&f).await?;
            report_purged(global, purged)?;
        }
        DlqCommand::Replay(r) => {
            return replay(r, store, &url, &args.mongo_database, global, now).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn report_purged(global: Global, n: u64) -> anyhow::Result<()> {
    if global.json {
        json(&serde_json::json!({ "purged": n }))
    } else {
        println!("purged {n} dead letter(s)");
        Ok(())
    }
}

async fn replay(
    r: ReplayArgs,
    store: Arc<dyn DeadLetterStore>,
    store_url: &str,
    mongo_database: &str,
    global: Global,
    now: DateTime<Utc>,
) -> anyhow::Result<ExitCode> {
    let target =
        r.to.as_deref()
            .map(QueueName::new)
            .transpose()
            .context("--to")?;
    let rate = match r.rate {
        None => None,
        Some(0) => anyhow::bail!("--rate must be at least 1 message per second"),
        Some(n) => NonZeroU32::new(n),
    };
    let options = ReplayOptions::default()
        .filter(r.filter.to_filter(now)?)
        .target(target)
        .dry_run(r.dry_run)
        .rate(rate)
        .batch_size(r.batch_size)
        .include_replayed(r.include_replayed);
    options.validate()?;
    let queue_url = r.queue_url.as_deref().unwrap_or(store_url);
    let queue = open_queue(queue_url, &r.queue_table, mongo_database).await?;
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if global.json || !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} replay [{bar:40}] {pos}/{len} {per_sec} eta {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let report = Replayer::new(store, queue.clone())
        .run_with_progress(&options, |report, total| {
            bar.set_length(total);
            bar.set_position(report.handled());
            bar.set_message(format!(
                "published {} failed {}",
                report.published.len(),
                report.failed.len()
            ));
        })
        .await;
    bar.finish_and_clear();
    let shut = queue.shutdown().await;
    let report = report?;
    shut.context("closing the queue")?;
    if global.json {
        json(&report)?;
    } else {
        print_report(&report);
    }
    Ok(if report.is_complete() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_report(r: &ReplayReport) {
    let verb = if r.dry_run {
        "would publish"
    } else {
        "published"
    };
    println!("selected           {}", r.selected);
    println!("{verb:<18} {}", r.published.len());
    if !r.dry_run {
        println!("already published  {}", r.already_published.len());
    }
    println!("skipped            {}", r.skipped.len());
    println!("failed             {}", r.failed.len());
    for f in &r.failed {
        println!("  {}  {}", f.entry, cut(&f.error, 100));
    }
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn list_table(entries: &[DeadLetterEntry]) {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.id.to_string(),
                e.queue().to_string(),
                e.message.message_type.clone(),
                cut(e.message.id.as_str(), 28),
                e.failures.to_string(),
                time(e.last_failed_at),
                e.replay_state().to_string(),
                cut(&e.error.to_string(), 60),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "QUEUE",
            "TYPE",
            "MESSAGE",
            "FAILURES",
            "LAST FAILED",
            "REPLAY",
            "ERROR",
        ],
        &rows,
    );
}

fn show(e: &DeadLetterEntry) -> anyhow::Result<()> {
    println!("entry          {}", e.id);
    println!("queue          {}", e.queue());
    println!("message id     {}", e.message.id);
    println!("type           {}", e.message.message_type);
    println!("backend        {}", e.origin.backend);
    if let Some(s) = &e.origin.shard_id {
        println!("shard          {s}");
    }
    if let Some(s) = &e.origin.sequence_number {
        println!("sequence       {s}");
    }
    if let Some(bytes) = &e.original_bytes {
        let form = if std::str::from_utf8(bytes).is_ok() {
            "UTF-8 text"
        } else {
            "binary, shown in base64 by --json"
        };
        println!(
            "original bytes {} bytes, kept ({form}); a replay to its stream writes them back unchanged",
            bytes.len()
        );
    }
    println!(
        "attempts       {} ({})",
        e.attempts,
        if e.exhausted {
            "exhausted"
        } else {
            "failed by the handler"
        }
    );
    println!("failures       {}", e.failures);
    println!("first failed   {}", time(e.first_failed_at));
    println!("last failed    {}", time(e.last_failed_at));
    println!("consumer       {}", e.consumer_id);
    println!("replay         {}", e.replay_state());
    if let Some(m) = &e.replay {
        println!("  generation   {}", m.generation);
        println!("  message id   {}", m.message_id);
        println!("  target       {}", m.target);
        println!("  started      {}", time(m.started_at));
        if let Some(t) = m.replayed_at {
            println!("  replayed     {}", time(t));
        }
    }
    println!("error");
    for (i, cause) in e.error.causes().iter().enumerate() {
        println!("  {}{cause}", if i == 0 { "" } else { "caused by: " });
    }
    println!("message");
    println!("{}", serde_json::to_string_pretty(&e.message)?);
    if let Some(text) = e
        .original_bytes
        .as_deref()
        .and_then(|b| std::str::from_utf8(b).ok())
    {
        println!("original bytes");
        println!("{}", printable(text));
    }
    Ok(())
}

/// `text` with its control characters other than line breaks and tabs escaped (`\u{1b}`), so a
/// record cannot drive the terminal it is shown on.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\n' | '\t' => c.to_string(),
            c if c.is_control() => c.escape_default().to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// `--store-url`, else `$DATABASE_URL`, else `$MONGODB_URI`.
fn store_url(flag: Option<&str>) -> anyhow::Result<String> {
    if let Some(u) = flag.filter(|u| !u.is_empty()) {
        return Ok(u.to_owned());
    }
    for var in ["DATABASE_URL", "MONGODB_URI"] {
        if let Ok(u) = std::env::var(var)
            && !u.is_empty()
        {
            return Ok(u);
        }
    }
    anyhow::bail!(
        "no dead-letter store: pass --store-url or set MQ_DLQ_URL, DATABASE_URL or MONGODB_URI"
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    Postgres,
    MySql,
    Sqlite,
    Mongo,
}

/// The database kind of `url`, by its scheme.
pub(crate) fn scheme(url: &str) -> anyhow::Result<Scheme> {
    let s = url.split(':').next().unwrap_or_default();
    Ok(match s {
        "postgres" | "postgresql" => Scheme::Postgres,
        "mysql" | "mariadb" => Scheme::MySql,
        "sqlite" => Scheme::Sqlite,
        "mongodb" | "mongodb+srv" => Scheme::Mongo,
        _ => anyhow::bail!(
            "unsupported URL scheme {s:?}: use postgres://, mysql://, sqlite: or mongodb://"
        ),
    })
}

/// `url` with its credentials replaced, for messages.
pub(crate) use mq::backend::redact_url as redact;

/// How long mqctl waits for a server before it says it cannot reach it.
pub(crate) const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens the dead-letter store at `url` without creating or altering anything: a table or
/// collection that does not exist is an error naming it, so a typo never creates one.
async fn open_store(
    url: &str,
    table: &str,
    mongo_db: &str,
) -> anyhow::Result<Arc<dyn DeadLetterStore>> {
    let where_ = || format!("connecting to the dead-letter store at {}", redact(url));
    let store: Arc<dyn DeadLetterStore> = match scheme(url)? {
        Scheme::Postgres => Arc::new(PgDeadLetterStore::new(
            connect_pool(url).await.with_context(where_)?,
            table,
        )?),
        Scheme::MySql => Arc::new(MySqlDeadLetterStore::new(
            connect_pool(url).await.with_context(where_)?,
            table,
        )?),
        Scheme::Sqlite => Arc::new(SqliteDeadLetterStore::new(
            connect_pool(url).await.with_context(where_)?,
            table,
        )?),
        Scheme::Mongo => {
            let options = MongoOptions::default()
                .database(mongo_db)
                .dead_letter_collection(table)
                .create_schema(false)
                .server_selection_timeout(CONNECT_TIMEOUT)
                .connect_timeout(CONNECT_TIMEOUT);
            Arc::new(
                MongoDeadLetterStore::connect(url, options)
                    .await
                    .with_context(where_)?,
            )
        }
    };
    // One cheap read proves the table is there before any command runs.
    store
        .count(&DeadLetterFilter::default().limit(1))
        .await
        .with_context(|| {
            format!(
                "cannot read dead-letter table {table:?} at {} (does it exist? mqctl never creates it)",
                redact(url)
            )
        })?;
    Ok(store)
}

/// A small pool on `url`. One connection is opened first, within [`CONNECT_TIMEOUT`], so an
/// unreachable server fails fast with the driver's own reason ("connection refused"), not with
/// a pool timeout.
pub(crate) async fn connect_pool<DB: sqlx::Database>(url: &str) -> anyhow::Result<sqlx::Pool<DB>> {
    use sqlx::Connection;
    let first = tokio::time::timeout(CONNECT_TIMEOUT, DB::Connection::connect(url))
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {CONNECT_TIMEOUT:?}"))??;
    first.close().await?;
    Ok(sqlx::pool::PoolOptions::new()
        .max_connections(2)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect(url)
        .await?)
}

async fn open_queue(
    url: &str,
    table: &str,
    mongo_db: &str,
) -> anyhow::Result<Arc<dyn MessageQueue>> {
    // The queue must exist already: replaying into a mistyped table would create a queue no
    // consumer reads.
    let where_ = || {
        format!(
            "opening queue table {table:?} at {} to replay into (pass --queue-table with the table the dead letters came from)",
            redact(url)
        )
    };
    let sql = SqlOptions::default()
        .table(table)
        .notify(false)
        .create_schema(false);
    let common = CommonOptions::default();
    Ok(match scheme(url)? {
        Scheme::Postgres => Arc::new(
            mq::PgQueue::connect(url, sql.common(common))
                .await
                .with_context(where_)?,
        ),
        Scheme::MySql => Arc::new(
            mq::MySqlQueue::connect(url, sql.common(common))
                .await
                .with_context(where_)?,
        ),
        Scheme::Sqlite => Arc::new(
            mq::SqliteQueue::connect(url, sql.common(common))
                .await
                .with_context(where_)?,
        ),
        Scheme::Mongo => Arc::new(
            MongoQueue::connect(
                url,
                MongoOptions::default()
                    .database(mongo_db)
                    .collection(table)
                    .change_stream(false)
                    .create_schema(false)
                    .common(common),
            )
            .await
            .with_context(where_)?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("a\tb\nc\u{1b}[2J\r"), "a\tb\nc\\u{1b}[2J\\r");
    }

    #[test]
    fn schemes_and_redaction() {
        assert_eq!(scheme("postgres://u:p@h/db").unwrap(), Scheme::Postgres);
        assert_eq!(scheme("sqlite::memory:").unwrap(), Scheme::Sqlite);
        assert_eq!(scheme("mongodb+srv://h").unwrap(), Scheme::Mongo);
        assert!(scheme("redis://h").is_err());
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://…@h:5432/db"
        );
        assert_eq!(redact("sqlite:x.db"), "sqlite:x.db");
    }
}
