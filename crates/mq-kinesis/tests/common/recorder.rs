//! A `CheckpointStore` wrapper that logs every epoch observation and checkpoint write in the
//! order the durable store applied them, and checks the fencing invariant over the log.
#![allow(dead_code, unreachable_pub)]

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;

use mq_core::backend::{
    CheckpointOutcome, CheckpointStore, StoredCheckpoint, compare_sequence_numbers,
};
use mq_core::{Result, async_trait};

#[derive(Debug, Clone)]
pub enum Event {
    Observe {
        shard: String,
        epoch: u64,
    },
    Save {
        shard: String,
        epoch: u64,
        seq: String,
        outcome: CheckpointOutcome,
    },
    Override {
        shard: String,
        epoch: u64,
    },
    Mark(&'static str),
}

/// Holds one lock across each write, so the log order is the order the store applied them.
#[derive(Debug)]
pub struct Recorder {
    inner: Arc<dyn CheckpointStore>,
    log: tokio::sync::Mutex<Vec<Event>>,
}

#[derive(Debug, Default, Clone)]
pub struct ShardSummary {
    pub advanced: usize,
    pub not_forward: usize,
    pub fenced: usize,
    /// Epochs observed (acquisitions) in order.
    pub epochs: Vec<u64>,
    /// The newest epoch before the first mark.
    pub epoch_at_mark: Option<u64>,
}

impl Recorder {
    pub fn new(inner: Arc<dyn CheckpointStore>) -> Self {
        Recorder {
            inner,
            log: tokio::sync::Mutex::new(Vec::new()),
        }
    }

    pub async fn mark(&self, what: &'static str) {
        self.log.lock().await.push(Event::Mark(what));
    }

    pub async fn events(&self) -> Vec<Event> {
        self.log.lock().await.clone()
    }

    /// Checks, per shard, in the order the store applied the writes: every accepted write had an
    /// epoch at or above every epoch recorded before it (no stale owner got through), accepted
    /// epochs never decrease and accepted sequence numbers always increase; every fenced write
    /// really was below the fence. Returns per-shard counts.
    pub async fn check(&self) -> BTreeMap<String, ShardSummary> {
        let mut fence: BTreeMap<String, u64> = BTreeMap::new();
        let mut last: BTreeMap<String, (u64, String)> = BTreeMap::new();
        let mut out: BTreeMap<String, ShardSummary> = BTreeMap::new();
        let mut marked = false;
        for e in self.log.lock().await.iter() {
            match e {
                Event::Mark(_) => {
                    if !marked {
                        for (shard, f) in &fence {
                            out.entry(shard.clone()).or_default().epoch_at_mark = Some(*f);
                        }
                    }
                    marked = true;
                }
                Event::Observe { shard, epoch } => {
                    let f = fence.entry(shard.clone()).or_default();
                    *f = (*f).max(*epoch);
                    out.entry(shard.clone()).or_default().epochs.push(*epoch);
                }
                Event::Override { shard, epoch } => {
                    let f = fence.entry(shard.clone()).or_default();
                    *f = (*f).max(*epoch);
                    last.remove(shard);
                }
                Event::Save {
                    shard,
                    epoch,
                    seq,
                    outcome,
                } => {
                    let f = fence.entry(shard.clone()).or_default();
                    let s = out.entry(shard.clone()).or_default();
                    match outcome {
                        CheckpointOutcome::Advanced => {
                            assert!(
                                *epoch >= *f,
                                "{shard}: write of {seq} with stale epoch {epoch} accepted (fence {f})"
                            );
                            if let Some((le, ls)) = last.get(shard) {
                                assert!(
                                    epoch >= le,
                                    "{shard}: accepted epoch went back {le} -> {epoch}"
                                );
                                assert_eq!(
                                    compare_sequence_numbers(seq, ls),
                                    Ordering::Greater,
                                    "{shard}: checkpoint went back {ls} -> {seq}"
                                );
                            }
                            *f = (*f).max(*epoch);
                            last.insert(shard.clone(), (*epoch, seq.clone()));
                            s.advanced += 1;
                        }
                        CheckpointOutcome::Fenced => {
                            assert!(*epoch < *f, "{shard}: epoch {epoch} fenced at fence {f}");
                            s.fenced += 1;
                        }
                        _ => s.not_forward += 1,
                    }
                }
            }
        }
        out
    }
}

#[async_trait]
impl CheckpointStore for Recorder {
    async fn load(&self, stream: &str, shard: &str) -> Result<Option<StoredCheckpoint>> {
        self.inner.load(stream, shard).await
    }

    async fn save(
        &self,
        stream: &str,
        shard: &str,
        epoch: u64,
        sequence_number: &str,
    ) -> Result<CheckpointOutcome> {
        let mut log = self.log.lock().await;
        let outcome = self
            .inner
            .save(stream, shard, epoch, sequence_number)
            .await?;
        log.push(Event::Save {
            shard: shard.to_owned(),
            epoch,
            seq: sequence_number.to_owned(),
            outcome,
        });
        Ok(outcome)
    }

    async fn observe_epoch(&self, stream: &str, shard: &str, epoch: u64) -> Result<u64> {
        let mut log = self.log.lock().await;
        let before = self.inner.observe_epoch(stream, shard, epoch).await?;
        log.push(Event::Observe {
            shard: shard.to_owned(),
            epoch,
        });
        Ok(before)
    }

    async fn max_epoch(&self, stream: &str, shard: &str) -> Result<u64> {
        self.inner.max_epoch(stream, shard).await
    }

    async fn checkpoints(&self, stream: &str) -> Result<Vec<StoredCheckpoint>> {
        self.inner.checkpoints(stream).await
    }

    async fn set_checkpoint(
        &self,
        stream: &str,
        shard: &str,
        sequence_number: &str,
    ) -> Result<u64> {
        let mut log = self.log.lock().await;
        let epoch = self
            .inner
            .set_checkpoint(stream, shard, sequence_number)
            .await?;
        log.push(Event::Override {
            shard: shard.to_owned(),
            epoch,
        });
        Ok(epoch)
    }
}
