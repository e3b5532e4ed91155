//! `mqctl`: the operator CLI of mq.
//!
//! - `mqctl dlq list|show|replay|purge`: dead letters in a SQL or MongoDB store;
//! - `mqctl queue stats`: messages by status, oldest ready message, expired leases of SQL and
//!   MongoDB queues;
//! - `mqctl kinesis status`: shards with lineage, leases, checkpoints, poison counters and live
//!   instances of a Kinesis stream (read-only);
//! - `mqctl kinesis checkpoint set|advance`: move a shard's checkpoint (the owner is fenced, the
//!   shard is read again after it); `mqctl kinesis lease release --force`: take a shard's lease
//!   from its owner (fenced) so any instance can acquire it. With `--checkpoint-url` (or
//!   `MQ_CHECKPOINT_URL`) every kinesis command reads and writes the durable checkpoint store
//!   beside the Redis leases, as the consumers do.
//!
//! Human tables by default, `--json` for scripts. Connection settings come from flags or the
//! environment (`MQ_DLQ_URL`, `DATABASE_URL`, `MONGODB_URI`, `REDIS_URL`, `MQ_CHECKPOINT_URL`,
//! AWS settings). Destructive commands ask for confirmation on a terminal unless `--yes`, and
//! refuse to run without a terminal unless `--yes`.

use std::io::IsTerminal;

use clap::{Parser, Subcommand};

mod args;
mod dlq;
mod kinesis;
mod migrations;
mod output;
mod stats;

/// Operate mq queues: dead letters, queue statistics, Kinesis leases.
#[derive(Debug, Parser)]
#[command(
    name = "mqctl",
    version,
    about,
    propagate_version = true,
    after_help = "Exit codes: 0 done; 1 ran, but not everything was done (a replay left entries \
                  behind, or a confirmation was declined); 2 refused: a bad argument, a store or \
                  stream that cannot be reached or does not exist, an unknown id.\n\
                  URLs come from flags or the environment: MQ_DLQ_URL, MQ_QUEUE_URL, \
                  DATABASE_URL, MONGODB_URI, REDIS_URL, MQ_CHECKPOINT_URL; passwords in them are \
                  never printed."
)]
struct Cli {
    /// Print JSON instead of tables (and no progress bar).
    #[arg(long, global = true)]
    json: bool,
    /// Do not ask for confirmation before destructive commands.
    #[arg(long, short = 'y', global = true)]
    yes: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Dead letters: list, show, replay, purge.
    Dlq(Box<dlq::DlqArgs>),
    /// Kinesis: shard leases, checkpoints and lineage.
    Kinesis(Box<kinesis::KinesisArgs>),
    /// Queues: statistics and schema migrations.
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
}

#[derive(Debug, Subcommand)]
enum QueueCommand {
    /// Messages by status, age of the oldest ready message and expired leases, per queue.
    Stats(stats::StatsArgs),
    /// The schema migrations of a SQL queue table: applied and pending. Changes nothing.
    Migrations(migrations::MigrationsArgs),
    /// Applies the pending schema migrations of a SQL queue table (asks first; --yes skips).
    Migrate(migrations::MigrationsArgs),
}

/// What every command needs besides its own arguments.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Global {
    pub(crate) json: bool,
    pub(crate) yes: bool,
}

impl Global {
    /// Asks `question` on the terminal unless `--yes`; refuses without a terminal.
    pub(crate) fn confirm(&self, question: &str) -> anyhow::Result<bool> {
        if self.yes {
            return Ok(true);
        }
        if !std::io::stdin().is_terminal() {
            anyhow::bail!("{question}: refusing without a terminal to confirm; pass --yes");
        }
        eprint!("{question} [y/N] ");
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        Ok(matches!(line.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let global = Global {
        json: cli.json,
        yes: cli.yes,
    };
    let result = match cli.command {
        Command::Dlq(args) => dlq::run(*args, global).await,
        Command::Kinesis(args) => kinesis::run(*args, global).await,
        Command::Queue {
            command: QueueCommand::Stats(args),
        } => stats::run(args, global).await,
        Command::Queue {
            command: QueueCommand::Migrations(args),
        } => migrations::run(args, global, false).await,
        Command::Queue {
            command: QueueCommand::Migrate(args),
        } => migrations::run(args, global, true).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mqctl: {}", one_line(&e));
            std::process::ExitCode::from(2)
        }
    }
}

/// `e` and its causes on one line, each cause once (see [`mq::ErrorChain`]).
fn one_line(e: &anyhow::Error) -> String {
    mq::ErrorChain::from_error(e.as_ref())
        .to_string()
        .replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn causes_repeated_by_their_parent_are_printed_once() {
        let e = anyhow::anyhow!("relation \"x\" does not exist")
            .context("error returned from database: relation \"x\" does not exist")
            .context("reading the table");
        assert_eq!(
            one_line(&e),
            "reading the table: error returned from database: relation \"x\" does not exist"
        );
    }
}
