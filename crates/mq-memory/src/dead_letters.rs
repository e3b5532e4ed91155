//! [`MemoryDeadLetterStore`]: dead letters in process memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mq_core::{
    BoxError, DeadLetter, DeadLetterEntry, DeadLetterFilter, DeadLetterSink, DeadLetterStore,
    EntryId, MessageId, ReplayMark, ReplayState, Result,
};

/// Dead letters in process memory, for tests and single-process programs; lost on exit.
///
/// # Examples
///
/// ```
/// use mq_core::{DeadLetter, DeadLetterFilter, DeadLetterOrigin, DeadLetterStore, ErrorChain};
/// use mq_core::{Message, MessageId, QueueName};
/// use mq_memory::MemoryDeadLetterStore;
///
/// # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
/// let store = MemoryDeadLetterStore::new();
/// let message = Message::new(MessageId::new("m1")?, QueueName::new("emails")?, "welcome",
///     serde_json::json!({}), chrono::Utc::now());
/// store.insert(vec![DeadLetter::new(message, DeadLetterOrigin::backend("memory"),
///     ErrorChain::msg("boom"), true, "w1")]).await?;
/// assert_eq!(store.count(&DeadLetterFilter::default()).await?, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Default)]
pub struct MemoryDeadLetterStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    entries: BTreeMap<EntryId, DeadLetterEntry>,
    by_message: HashMap<(String, String), EntryId>,
}

impl MemoryDeadLetterStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryDeadLetterStore::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl DeadLetterSink for MemoryDeadLetterStore {
    async fn dead_letter(&self, letters: Vec<DeadLetter>) -> Result<(), BoxError> {
        Ok(self.insert(letters).await?)
    }
}

#[async_trait]
impl DeadLetterStore for MemoryDeadLetterStore {
    async fn insert(&self, letters: Vec<DeadLetter>) -> Result<()> {
        let mut s = self.state();
        for letter in letters {
            let key = (
                letter.message.queue.as_str().to_owned(),
                letter.message.id.as_str().to_owned(),
            );
            match s.by_message.get(&key).cloned() {
                Some(id) => {
                    if let Some(e) = s.entries.get_mut(&id) {
                        e.absorb(letter);
                    }
                }
                None => {
                    let entry = DeadLetterEntry::from_letter(letter);
                    s.by_message.insert(key, entry.id.clone());
                    s.entries.insert(entry.id.clone(), entry);
                }
            }
        }
        Ok(())
    }

    async fn list(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetterEntry>> {
        let s = self.state();
        let limit = filter.get_limit().unwrap_or(usize::MAX);
        Ok(s.entries
            .values()
            .filter(|e| filter.get_after().is_none_or(|a| &e.id > a))
            .filter(|e| filter.matches(e))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn get(&self, id: &EntryId) -> Result<Option<DeadLetterEntry>> {
        Ok(self.state().entries.get(id).cloned())
    }

    async fn count(&self, filter: &DeadLetterFilter) -> Result<u64> {
        let s = self.state();
        Ok(s.entries.values().filter(|e| filter.matches(e)).count() as u64)
    }

    async fn begin_replay(
        &self,
        id: &EntryId,
        expected_generation: u32,
        mark: &ReplayMark,
    ) -> Result<bool> {
        let mut s = self.state();
        let Some(e) = s.entries.get_mut(id) else {
            return Ok(false);
        };
        let generation = e.replay.as_ref().map_or(0, |m| m.generation);
        if generation != expected_generation || e.replay_state() == ReplayState::Pending {
            return Ok(false);
        }
        e.replay = Some(mark.clone());
        Ok(true)
    }

    async fn finish_replay(
        &self,
        id: &EntryId,
        message_id: &MessageId,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        let mut s = self.state();
        let Some(mark) = s.entries.get_mut(id).and_then(|e| e.replay.as_mut()) else {
            return Ok(false);
        };
        if &mark.message_id != message_id {
            return Ok(false);
        }
        if mark.replayed_at.is_none() {
            // Stores keep milliseconds; so does this one, so entries compare equal everywhere.
            mark.replayed_at =
                Some(DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap_or(at));
        }
        Ok(true)
    }

    async fn purge(&self, filter: &DeadLetterFilter) -> Result<u64> {
        let mut s = self.state();
        let doomed: Vec<EntryId> = s
            .entries
            .values()
            .filter(|e| filter.matches(e))
            .map(|e| e.id.clone())
            .collect();
        for id in &doomed {
            if let Some(e) = s.entries.remove(id) {
                s.by_message.remove(&(
                    e.message.queue.as_str().to_owned(),
                    e.message.id.as_str().to_owned(),
                ));
            }
        }
        Ok(doomed.len() as u64)
    }
}
