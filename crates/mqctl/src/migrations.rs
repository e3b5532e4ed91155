//! `mqctl queue migrations` and `mqctl queue migrate`: the schema migrations of a SQL queue
//! table, listed without changing anything, or applied (after a confirmation).

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use mq::sql::{Migration, SqlOptions, SqlStore};
use serde::Serialize;

use crate::Global;
use crate::dlq::{Scheme, connect_pool, redact, scheme};
use crate::output::{json, table};

/// Which queue table.
#[derive(Debug, Args)]
pub(crate) struct MigrationsArgs {
    /// The queue database: a postgres://, mysql:// or sqlite: URL [default: $DATABASE_URL].
    #[arg(long, env = "MQ_QUEUE_URL")]
    url: Option<String>,
    /// The table of the messages.
    #[arg(long, default_value = "mq_messages")]
    table: String,
}

/// One migration, as printed.
#[derive(Debug, Serialize)]
struct Row {
    version: u32,
    name: &'static str,
    applied: bool,
}

impl From<Migration> for Row {
    fn from(m: Migration) -> Self {
        Row {
            version: m.version,
            name: m.name,
            applied: m.applied,
        }
    }
}

/// Lists the migrations of the table (`apply` false), or applies the pending ones first.
pub(crate) async fn run(
    args: MigrationsArgs,
    global: Global,
    apply: bool,
) -> anyhow::Result<ExitCode> {
    let url = match args.url.clone().filter(|u| !u.is_empty()) {
        Some(u) => u,
        None => std::env::var("DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .context("no queue database: pass --url or set MQ_QUEUE_URL or DATABASE_URL")?,
    };
    let options = SqlOptions::default()
        .table(&args.table)
        .notify(false)
        .create_schema(true);
    options.validate()?;
    let ctx = || {
        format!(
            "reading the migrations of {} in {}",
            args.table,
            redact(&url)
        )
    };
    // One arm per SQL database: the store type differs, the steps do not.
    macro_rules! migrations {
        ($db:ty) => {{
            let pool = connect_pool::<$db>(&url).await.with_context(ctx)?;
            let mut list = SqlStore::<$db>::migrations(&pool, &options)
                .await
                .with_context(ctx)?;
            let pending = list.iter().filter(|m| !m.applied).count();
            if apply && pending > 0 {
                let question = format!(
                    "apply {pending} pending migration(s) to table {} in {}?",
                    args.table,
                    redact(&url)
                );
                if !global.confirm(&question)? {
                    anyhow::bail!("nothing applied");
                }
                let store = SqlStore::<$db>::from_pool(pool.clone(), options.clone())
                    .await
                    .with_context(|| format!("migrating {}", args.table))?;
                store.close().await;
                list = SqlStore::<$db>::migrations(&pool, &options)
                    .await
                    .with_context(ctx)?;
            }
            pool.close().await;
            list
        }};
    }
    let list = match scheme(&url)? {
        Scheme::Postgres => migrations!(sqlx::Postgres),
        Scheme::MySql => migrations!(sqlx::MySql),
        Scheme::Sqlite => migrations!(sqlx::Sqlite),
        Scheme::Mongo => anyhow::bail!(
            "MongoDB collections have no schema migrations: their indexes are made when a queue registers"
        ),
    };
    let rows: Vec<Row> = list.into_iter().map(Row::from).collect();
    if global.json {
        json(&rows)?;
    } else {
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                vec![
                    r.version.to_string(),
                    r.name.to_owned(),
                    if r.applied { "applied" } else { "pending" }.to_owned(),
                ]
            })
            .collect();
        table(&["VERSION", "MIGRATION", "STATE"], &cells);
    }
    Ok(ExitCode::SUCCESS)
}
