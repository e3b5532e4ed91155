//! Publish a few messages and watch a background consumer process them, on the embedded
//! default: SQLite in a local file, no server needed. The file is `mq-quickstart.db` in the
//! system's temp directory, or the path given as the first argument.
//!
//! Run with `cargo run -p mq-rs --features sql-sqlite --example quickstart`. Run it twice: the
//! queue is durable, and each run starts from an empty queue because it acknowledges everything.

use std::sync::Arc;
use std::time::Duration;

use mq::{
    Batch, CommonOptions, ConsumerOptions, HandlerContext, MessageQueue, NewMessage, Outcome,
    Outcomes, QueueName, RetryPolicy, SqlOptions, SqliteQueue, handler_fn,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let path = std::env::args_os()
        .nth(1)
        .map_or_else(|| std::env::temp_dir().join("mq-quickstart.db"), Into::into);
    println!("queue database: {}", path.display());
    let queue = SqliteQueue::connect(
        &format!("sqlite://{}?mode=rwc", path.display()),
        SqlOptions::default().common(CommonOptions::default()),
    )
    .await?;
    let emails = QueueName::new("emails")?;
    queue.register(&emails).await?;

    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let handler = handler_fn(move |batch: Batch, ctx: HandlerContext| {
        let done = done_tx.clone();
        async move {
            let mut outcomes = Outcomes::ack_all();
            for m in batch.iter() {
                let to = m.payload["to"].as_str().unwrap_or("?");
                if to.ends_with("@flaky.example") && m.attempts == 1 {
                    println!(
                        "[{}] {} to {to}: mail server busy, retrying",
                        ctx.consumer_id(),
                        m.message_type
                    );
                    outcomes.insert(
                        m.id.clone(),
                        Outcome::retry_after(Duration::from_millis(200)),
                    );
                    continue;
                }
                println!(
                    "[{}] {} to {to} (attempt {})",
                    ctx.consumer_id(),
                    m.message_type,
                    m.attempts
                );
                let _ = done.send(m.id.to_string());
            }
            outcomes
        }
    });

    let options = ConsumerOptions::default()
        .batch_size(10)
        .poll_interval(Duration::from_millis(50))
        .retry(RetryPolicy::default().max_attempts(3));
    let consumer = queue.consume(&emails, Arc::new(handler), options).await?;

    let messages = ["ada@example.com", "bob@flaky.example", "cy@example.com"]
        .into_iter()
        .map(|to| NewMessage::json("welcome-email", &serde_json::json!({ "to": to })))
        .collect::<Result<Vec<_>, _>>()?;
    let report = queue.publish(&emails, messages).await?;
    println!("published {} messages", report.published.len());

    for _ in 0..report.published.len() {
        tokio::time::timeout(Duration::from_secs(10), done_rx.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("consumer stopped early"))?;
    }
    consumer.stop().await;
    queue.shutdown().await?;
    println!("all messages processed");
    Ok(())
}
