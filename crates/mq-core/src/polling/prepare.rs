//! Turning a publish's [`NewMessage`]s into stored [`Message`]s, refusing each bad one alone.

use chrono::Utc;

use crate::error::Error;
use crate::message::{Message, NewMessage};
use crate::options::CommonOptions;
use crate::queue::PublishFailure;
use crate::queue_name::QueueName;

/// Validates and converts messages for `queue` under `common`'s id generator and size limit.
pub fn prepare_messages(
    common: &CommonOptions,
    queue: &QueueName,
    messages: Vec<NewMessage>,
    failed: &mut Vec<PublishFailure>,
) -> Vec<(usize, Message)> {
    let (indexes, messages) = prepare_split(common, queue, messages, failed);
    indexes.into_iter().zip(messages).collect()
}

/// [`prepare_messages`] returning batch indexes and messages apart, so the messages can go to
/// the store without another copy.
pub(super) fn prepare_split(
    common: &CommonOptions,
    queue: &QueueName,
    messages: Vec<NewMessage>,
    failed: &mut Vec<PublishFailure>,
) -> (Vec<usize>, Vec<Message>) {
    let now = Utc::now();
    let mut out = Vec::with_capacity(messages.len());
    let mut indexes = Vec::with_capacity(messages.len());
    for (index, nm) in messages.into_iter().enumerate() {
        if let Err(error) = nm.validate() {
            failed.push(PublishFailure {
                index,
                id: nm.get_id().cloned(),
                error,
            });
            continue;
        }
        let m = nm.into_message(&*common.id_generator, queue.clone(), now);
        if let Err(error) = m.check_storable() {
            failed.push(PublishFailure {
                index,
                id: Some(m.id),
                error,
            });
            continue;
        }
        // A cheap upper bound settles the common case; the exact size is computed only near the
        // limit.
        if m.encoded_len_upper_bound() <= common.max_message_bytes {
            out.push(m);
            indexes.push(index);
            continue;
        }
        let size = m.encoded_len();
        if size > common.max_message_bytes {
            failed.push(PublishFailure {
                index,
                id: Some(m.id.clone()),
                error: Error::MessageTooLarge {
                    id: m.id,
                    size,
                    limit: common.max_message_bytes,
                },
            });
            continue;
        }
        out.push(m);
        indexes.push(index);
    }
    (indexes, out)
}
