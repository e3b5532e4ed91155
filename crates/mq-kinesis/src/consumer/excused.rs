//! Batch starts that are not their records' fault: a batch ended by a lease-store failure, a
//! lost lease or a stop was counted when it started (so that a crash counts), and is taken back
//! here so that it never counts towards a poison pill.

use std::collections::HashMap;
use std::sync::Mutex;

use super::ShardConsumer;
use super::deadline::within;

/// The batch starts of this worker that were not their records' fault and that the lease store
/// could not forget (it was unreachable): by shard, the checkpoint they started after and how
/// many. They are subtracted from the count the store returns for the next start there.
#[derive(Debug, Default)]
pub(crate) struct Excused(Mutex<HashMap<String, (String, u32)>>);

impl Excused {
    fn add(&self, shard: &str, from: &str) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match map.get_mut(shard) {
            Some((at, n)) if at == from => *n += 1,
            _ => {
                map.insert(shard.to_owned(), (from.to_owned(), 1));
            }
        }
    }

    fn of(&self, shard: &str, from: &str) -> u32 {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(shard) {
            Some((at, n)) if at == from => *n,
            _ => 0,
        }
    }

    /// The store forgot the shard's counts (progress, or a successful clear).
    pub(super) fn forget(&self, shard: &str) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(shard);
    }
}

impl ShardConsumer {
    /// The count of failed starts from `from` the store returned, without the starts that were
    /// not their records' fault (at least 1: this start).
    pub(super) fn counted_failures(&self, from: &str, stored: u32) -> u32 {
        stored
            .saturating_sub(self.env.excused.of(&self.shard, from))
            .max(1)
    }

    /// The batch that started from the current checkpoint ended without a fault of its records
    /// (a stop, a lease-store failure, a lease lost for any reason but a stuck handler): its start
    /// does not count towards a poison pill. The store's counts are cleared; when the store
    /// cannot do it, the start is remembered as excused by this worker.
    pub(super) async fn excuse_start(&mut self) {
        if self.renewal.lost_to_stall() {
            // a handler stuck past its limit is the record's doing, like a crash
            return;
        }
        let cleared = within(
            "clear failures",
            self.renewal.limit(),
            None,
            self.env.store.clear_failures(self.stream(), &self.shard),
        )
        .await;
        match cleared {
            Ok(()) => self.env.excused.forget(&self.shard),
            Err(e) => {
                let from = self.position.clone().unwrap_or_else(|| "start".into());
                tracing::warn!(shard = %self.shard, error = %e, "mq-kinesis: cannot clear failure counts; this batch start is not counted here");
                self.env.excused.add(&self.shard, &from);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excused_starts_count_per_checkpoint() {
        let e = Excused::default();
        e.add("s", "1");
        e.add("s", "1");
        assert_eq!(e.of("s", "1"), 2);
        assert_eq!(e.of("s", "2"), 0);
        e.add("s", "2");
        assert_eq!(e.of("s", "1"), 0, "a new checkpoint starts over");
        e.forget("s");
        assert_eq!(e.of("s", "2"), 0);
    }
}
