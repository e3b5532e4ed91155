//! The queues one backend instance has registered.

use std::collections::HashSet;
use std::sync::RwLock;

use crate::error::{Error, Result};
use crate::options::CommonOptions;
use crate::queue_name::QueueName;

/// The set of queues a backend instance has registered, by their resolved names, so that
/// publishing to or consuming from a queue nobody registered fails with
/// [`Error::NotRegistered`] instead of creating storage by accident.
///
/// # Examples
///
/// ```
/// use mq_core::{CommonOptions, Error, QueueName};
/// use mq_core::backend::RegisteredQueues;
///
/// let common = CommonOptions::default();
/// let registered = RegisteredQueues::default();
/// let emails = QueueName::new("emails")?;
/// assert!(matches!(registered.resolve(&common, &emails), Err(Error::NotRegistered { .. })));
/// registered.insert(common.get_resolver().resolve(&emails)?);
/// assert_eq!(registered.resolve(&common, &emails)?, emails);
/// # Ok::<(), Error>(())
/// ```
#[derive(Debug, Default)]
pub struct RegisteredQueues {
    names: RwLock<HashSet<QueueName>>,
}

impl RegisteredQueues {
    /// Records `resolved` (a name already passed through the resolver) as registered.
    pub fn insert(&self, resolved: QueueName) {
        self.names
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(resolved);
    }

    /// Resolves `queue` through `common`'s resolver and returns the resolved name if it was
    /// registered, [`Error::NotRegistered`] otherwise.
    pub fn resolve(&self, common: &CommonOptions, queue: &QueueName) -> Result<QueueName> {
        let resolved = common.get_resolver().resolve(queue)?;
        let known = self
            .names
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&resolved);
        if known {
            Ok(resolved)
        } else {
            Err(Error::NotRegistered { queue: resolved })
        }
    }
}
