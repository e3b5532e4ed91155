//! A consumer whose lifecycle events are exposed as Prometheus metrics on `/metrics`.
//!
//! Run with `cargo run -p mq-rs --features metrics --example metrics_server`, then
//! `curl http://127.0.0.1:9898/metrics`. `MQ_METRICS_ADDR` changes the address (`127.0.0.1:0`
//! picks a free port; the address is printed). `MQ_DEMO_SECONDS` stops it after that many
//! seconds.
//!
//! mq installs no recorder itself: the application installs `metrics-exporter-prometheus` and
//! attaches `MetricsObserver` to the queue's lifecycle dispatcher.

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use mq::{
    Batch, CommonOptions, ConsumerOptions, HandlerContext, InMemoryOptions, InMemoryQueue,
    LifecycleDispatcher, MessageQueue, MetricsObserver, NewMessage, Outcome, Outcomes, QueueName,
    RetryPolicy, handler_fn,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Histograms with buckets, so durations aggregate across instances and shards.
    let prometheus = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), MetricsObserver::BUCKETS)?
        .install_recorder()?;

    let lifecycle = LifecycleDispatcher::builder()
        .observer(Arc::new(MetricsObserver::new()))
        .build();
    let queue = InMemoryQueue::new(
        InMemoryOptions::default().common(CommonOptions::default().lifecycle(lifecycle)),
    );
    let jobs = QueueName::new("jobs")?;
    queue.register(&jobs).await?;

    // Every seventh message fails once, so retries show up too.
    let handler = handler_fn(|batch: Batch, _ctx: HandlerContext| async move {
        let mut out = Outcomes::ack_all();
        for m in batch.iter() {
            if m.payload["n"].as_u64().is_some_and(|n| n % 7 == 0) && m.attempts == 1 {
                out.insert(
                    m.id.clone(),
                    Outcome::retry_after(Duration::from_millis(100)),
                );
            }
        }
        out
    });
    let consumer = queue
        .consume(
            &jobs,
            Arc::new(handler),
            ConsumerOptions::default()
                .poll_interval(Duration::from_millis(20))
                .retry(RetryPolicy::default().base_delay(Duration::from_millis(100))),
        )
        .await?;

    let addr = std::env::var("MQ_METRICS_ADDR").unwrap_or_else(|_| "127.0.0.1:9898".into());
    let listener = TcpListener::bind(&addr).await?;
    println!("serving http://{}/metrics", listener.local_addr()?);

    let stop = CancellationToken::new();
    if let Some(secs) = std::env::var("MQ_DEMO_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            stop.cancel();
        });
    }
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                stop.cancel();
            }
        });
    }

    let mut n = 0u64;
    let mut publish = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = publish.tick() => {
                let batch = (0..10).map(|_| { n += 1; NewMessage::new("demo", serde_json::json!({ "n": n })) }).collect();
                queue.publish(&jobs, batch).await?.into_result()?;
            }
            accepted = listener.accept() => {
                let (mut socket, _) = accepted?;
                let body = prometheus.render();
                tokio::spawn(async move {
                    // One request per connection, whatever its path: enough for a scrape.
                    let mut buf = [0u8; 1024];
                    let _ = socket.read(&mut buf).await;
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = socket.write_all(head.as_bytes()).await;
                    let _ = socket.write_all(body.as_bytes()).await;
                });
            }
        }
    }
    consumer.stop().await;
    queue.shutdown().await?;
    Ok(())
}
