//! Wake-up of idle consumers: a per-queue [`Notify`] fed by a change stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use mongodb::Collection;
use mongodb::bson::{Document, doc};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Per-queue wake-up signals, and whether a change stream currently feeds them.
#[derive(Debug, Default)]
pub(crate) struct Wake {
    queues: RwLock<HashMap<String, Arc<Notify>>>,
    live: AtomicBool,
}

impl Wake {
    pub(crate) fn notify(&self, queue: &str) -> Arc<Notify> {
        // A poisoned lock still holds a usable map: a panic cannot leave it half-updated.
        let known = self.queues.read().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = known.get(queue) {
            return n.clone();
        }
        drop(known);
        let mut all = self.queues.write().unwrap_or_else(|e| e.into_inner());
        all.entry(queue.to_owned()).or_default().clone()
    }

    /// Wakes the waiters of `queue`, if anyone ever waited on it.
    pub(crate) fn wake(&self, queue: &str) {
        if let Some(n) = self
            .queues
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(queue)
        {
            n.notify_waiters();
        }
    }

    fn wake_all(&self) {
        for n in self
            .queues
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            n.notify_waiters();
        }
    }

    pub(crate) fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::Release);
    }
}

/// Server error codes that mean change streams will never work on this deployment.
const UNSUPPORTED: [i32; 3] = [
    40573, // The $changeStream stage is only supported on replica sets
    40324, // Unrecognized pipeline stage name
    115,   // CommandNotSupported
];

fn is_unsupported(e: &mongodb::error::Error) -> bool {
    matches!(&*e.kind, mongodb::error::ErrorKind::Command(c) if UNSUPPORTED.contains(&c.code))
}

/// The change-stream pipeline: inserted messages and messages put back to `scheduled`, each
/// event cut down to what a wake-up needs (the document key, which names the queue), so the
/// server never ships whole messages (payloads up to 16 MB) to every idle consumer.
fn pipeline() -> Vec<Document> {
    vec![
        doc! { "$match": { "$or": [
            { "operationType": "insert" },
            { "operationType": "update", "updateDescription.updatedFields.status": "scheduled" },
            { "operationType": "replace" },
        ] } },
        // `_id` (the resume token) stays: the stream cannot resume without it.
        doc! { "$project": { "operationType": 1, "documentKey": 1 } },
    ]
}

/// Watches `coll` for inserted messages and messages put back to `scheduled`, waking their
/// queue. Reopens the stream after errors (with backoff); stops for good when the server has no
/// change streams, leaving consumers to poll.
pub(crate) async fn watch(coll: Collection<Document>, wake: Arc<Wake>, cancel: CancellationToken) {
    let pipeline = pipeline();
    let mut backoff = Duration::from_millis(100);
    loop {
        let opened = tokio::select! {
            () = cancel.cancelled() => return,
            s = coll.watch().pipeline(pipeline.clone()) => s,
        };
        let mut stream = match opened {
            Ok(s) => s,
            Err(e) if is_unsupported(&e) => {
                tracing::info!(collection = %coll.name(), error = %e,
                    "mq-mongo: the server has no change streams; idle consumers will poll");
                wake.set_live(false);
                return;
            }
            Err(e) => {
                tracing::warn!(collection = %coll.name(), error = %e, retry_in = ?backoff,
                    "mq-mongo: opening the change stream failed; idle consumers poll meanwhile");
                wake.set_live(false);
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        wake.set_live(true);
        // Whatever happened while the stream was down is unknown: let everyone look.
        wake.wake_all();
        backoff = Duration::from_millis(100);
        loop {
            let next = tokio::select! {
                () = cancel.cancelled() => return,
                n = stream.next() => n,
            };
            match next {
                Some(Ok(event)) => {
                    let queue = event
                        .document_key
                        .as_ref()
                        .and_then(|k| k.get_str("_id").ok())
                        .and_then(|id| id.split_once('/'))
                        .map(|(q, _)| q);
                    if let Some(q) = queue {
                        wake.wake(q);
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(collection = %coll.name(), error = %e,
                        "mq-mongo: change stream failed; reopening it");
                    break;
                }
                None => break,
            }
        }
        wake.set_live(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_carry_only_what_a_wake_up_needs() {
        let stages = pipeline();
        let last = stages.last().and_then(|s| s.get_document("$project").ok());
        let Some(project) = last else {
            panic!("the pipeline ends without a projection: {stages:?}");
        };
        let kept: Vec<&str> = project.keys().map(String::as_str).collect();
        assert_eq!(kept, ["operationType", "documentKey"]);
    }
}
