//! Lease renewal that stops answering: the handler is cancelled (and dropped, when it ignores
//! its token) before its lease can lapse, so a second consumer never runs the message while the
//! first still does.
//!
//! The stall is injected: a store wrapper whose `renew` never returns while a switch is on, the
//! way a paused or partitioned database behaves.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mq_core::backend::{Claim, Claimed, Completion, Holder, PollingQueue, QueueStore};
use mq_core::testkit::{DeliveryLedger, eventually, fast_options};
use mq_core::{
    Batch, CommonOptions, HandlerContext, Message, MessageQueue, NewMessage, QueueName, Result,
    async_trait, handler_fn,
};
use mq_memory::MemoryStore;

#[derive(Debug)]
struct StallingStore {
    inner: MemoryStore,
    stall: AtomicBool,
}

#[async_trait]
impl QueueStore for StallingStore {
    fn backend(&self) -> &'static str {
        "memory"
    }
    async fn register(&self, queue: &QueueName) -> Result<()> {
        self.inner.register(queue).await
    }
    async fn insert(&self, queue: &QueueName, messages: Vec<Message>) -> Result<Vec<Result<()>>> {
        self.inner.insert(queue, messages).await
    }
    async fn claim(&self, queue: &QueueName, holder: Holder<'_>, limit: usize) -> Result<Claimed> {
        self.inner.claim(queue, holder, limit).await
    }
    async fn renew(
        &self,
        queue: &QueueName,
        holder: Holder<'_>,
        claims: &[Claim],
    ) -> Result<Vec<Claim>> {
        if self.stall.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.inner.renew(queue, holder, claims).await
    }
    async fn complete(
        &self,
        queue: &QueueName,
        owner: &str,
        completions: Vec<Completion>,
    ) -> Result<Vec<Claim>> {
        self.inner.complete(queue, owner, completions).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_renewal_stops_the_handler_before_the_lease_lapses() {
    for ignores_token in [false, true] {
        let store = StallingStore {
            inner: MemoryStore::new(100),
            stall: AtomicBool::new(false),
        };
        let queue = PollingQueue::new(store, CommonOptions::default());
        let name = QueueName::new("renewal-stall").unwrap();
        queue.register(&name).await.unwrap();
        let ids = queue
            .publish(
                &name,
                vec![NewMessage::new("slow", serde_json::Value::Null)],
            )
            .await
            .unwrap()
            .into_result()
            .unwrap();
        let id = ids[0].to_string();
        let ledger = Arc::new(DeliveryLedger::default());
        let l = ledger.clone();
        let handler = Arc::new(handler_fn(move |batch: Batch, ctx: HandlerContext| {
            let l = l.clone();
            async move {
                let id = batch[0].id.to_string();
                l.begin(&id);
                // Ends the run when the handler returns or is dropped.
                let _running = Running(l.clone(), id.clone());
                // Works for 4 s, longer than the 1.5 s lease; stops early if asked, unless it
                // ignores its token.
                let work = tokio::time::sleep(Duration::from_secs(4));
                if ignores_token {
                    work.await;
                } else {
                    tokio::select! {
                        () = work => {}
                        () = ctx.cancelled() => {}
                    }
                }
                if ctx.is_cancelled() {
                    Err(std::io::Error::other("stopped"))
                } else {
                    Ok(())
                }
            }
        }));
        let options = fast_options()
            .lease_duration(Duration::from_millis(1500))
            .cancel_grace(Duration::from_millis(100))
            .retry(mq_core::RetryPolicy::default().base_delay(Duration::from_millis(10)));
        let first = queue
            .consume(&name, handler.clone(), options.clone())
            .await
            .unwrap();
        eventually(Duration::from_secs(10), "first delivery running", || {
            ledger.distinct() == 1
        })
        .await;
        queue.store().stall.store(true, Ordering::SeqCst);
        // A second consumer polls all along and takes the message as soon as it may.
        let second = queue.consume(&name, handler, options).await.unwrap();
        eventually(Duration::from_secs(20), "a second delivery", || {
            ledger.deliveries_of(&id) >= 2
        })
        .await;
        queue.store().stall.store(false, Ordering::SeqCst);
        first.stop().await;
        second.stop().await;
        eprintln!(
            "ignores_token={ignores_token}: deliveries {}, overlapping runs {}",
            ledger.deliveries_of(&id),
            ledger.overlaps()
        );
        assert_eq!(
            ledger.overlaps(),
            0,
            "the message ran on two consumers at once (ignores_token={ignores_token})"
        );
        queue.shutdown().await.unwrap();
    }
}

/// Marks a run as ended in the ledger when dropped.
struct Running(Arc<DeliveryLedger>, String);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.end(&self.1);
    }
}
