//! Message id generation.

use std::fmt;

use crate::message::MessageId;

/// Makes ids for messages published without one.
///
/// Ids must be unique within a queue. The default, [`UlidGenerator`], gives ids that sort by
/// creation time, which keeps database indexes compact.
///
/// # Examples
///
/// ```
/// use mq_core::{IdGenerator, MessageId};
///
/// #[derive(Debug, Default)]
/// struct Counter(std::sync::atomic::AtomicU64);
///
/// impl IdGenerator for Counter {
///     fn next_id(&self) -> MessageId {
///         let n = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
///         MessageId::new(format!("job-{n}")).expect("a short ascii id is valid")
///     }
/// }
///
/// assert_eq!(Counter::default().next_id().as_str(), "job-0");
/// ```
pub trait IdGenerator: Send + Sync + fmt::Debug + 'static {
    /// A new id, never returned before.
    fn next_id(&self) -> MessageId;
}

/// The default id generator: a [ULID](https://github.com/ulid/spec) (26 characters, sortable by
/// time, 80 random bits).
///
/// # Examples
///
/// ```
/// use mq_core::{IdGenerator, UlidGenerator};
///
/// let a = UlidGenerator.next_id();
/// let b = UlidGenerator.next_id();
/// assert_eq!(a.as_str().len(), 26);
/// assert_ne!(a, b);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct UlidGenerator;

impl IdGenerator for UlidGenerator {
    fn next_id(&self) -> MessageId {
        let mut buf = [0u8; ulid::ULID_LEN];
        // A ULID is 26 Crockford base32 characters: always a valid id, no need to check.
        MessageId::from_valid(ulid::Ulid::new().array_to_str(&mut buf))
    }
}
