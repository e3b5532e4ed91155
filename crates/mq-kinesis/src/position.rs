//! [`StartPosition`]: where reading a shard starts.

use aws_sdk_kinesis::types::{ShardIteratorType, StartingPosition};
use chrono::{DateTime, Utc};

use crate::error::{Error, Result};

/// Where reading a shard starts: the start of a [`Subscription`](crate::Subscription), and,
/// through [`ShardOptions::initial_position`](crate::ShardOptions::initial_position), where the
/// shard consumers of a queue start on a shard without a checkpoint (a shard with one always
/// continues right after it).
///
/// # Examples
///
/// ```
/// use mq_kinesis::{ShardOptions, StartPosition};
///
/// assert_eq!(StartPosition::default(), StartPosition::TrimHorizon);
/// let opts = ShardOptions::default().initial_position(StartPosition::Latest);
/// assert_eq!(opts.get_initial_position(), &StartPosition::Latest);
///
/// let from_checkpoint = StartPosition::AfterSequenceNumber("49590338271490256608559692538361571095921575989136588898".into());
/// assert_ne!(from_checkpoint, StartPosition::TrimHorizon);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StartPosition {
    /// The oldest record kept by the stream (the default).
    #[default]
    TrimHorizon,
    /// Only records written after reading starts.
    Latest,
    /// Records written at or after this time (whole seconds on some emulators).
    AtTimestamp(DateTime<Utc>),
    /// Right after this sequence number (a checkpoint, or a continuation sequence number).
    ///
    /// Sequence numbers belong to one shard: as the initial position of a queue's shard
    /// consumers, every shard without a checkpoint starts there, so use it with one-shard
    /// streams only.
    AfterSequenceNumber(String),
    /// At this sequence number (same caveat as [`AfterSequenceNumber`](Self::AfterSequenceNumber)).
    AtSequenceNumber(String),
}

impl StartPosition {
    /// Right after `checkpoint` when there is one, `self` otherwise.
    pub(crate) fn resume(&self, checkpoint: Option<&str>) -> StartPosition {
        match checkpoint {
            Some(seq) => StartPosition::AfterSequenceNumber(seq.to_owned()),
            None => self.clone(),
        }
    }

    /// The iterator type, sequence number and timestamp of `GetShardIterator` and
    /// `SubscribeToShard`.
    pub(crate) fn parts(
        &self,
    ) -> (
        ShardIteratorType,
        Option<String>,
        Option<aws_smithy_types::DateTime>,
    ) {
        match self {
            StartPosition::TrimHorizon => (ShardIteratorType::TrimHorizon, None, None),
            StartPosition::Latest => (ShardIteratorType::Latest, None, None),
            StartPosition::AtTimestamp(at) => (
                ShardIteratorType::AtTimestamp,
                None,
                Some(aws_smithy_types::DateTime::from_millis(
                    at.timestamp_millis(),
                )),
            ),
            StartPosition::AfterSequenceNumber(s) => (
                ShardIteratorType::AfterSequenceNumber,
                Some(s.clone()),
                None,
            ),
            StartPosition::AtSequenceNumber(s) => {
                (ShardIteratorType::AtSequenceNumber, Some(s.clone()), None)
            }
        }
    }

    /// The `StartingPosition` of `SubscribeToShard`.
    pub(crate) fn to_sdk(&self) -> Result<StartingPosition> {
        let (kind, sequence, timestamp) = self.parts();
        StartingPosition::builder()
            .r#type(kind)
            .set_sequence_number(sequence)
            .set_timestamp(timestamp)
            .build()
            .map_err(|e| Error::kinesis("SubscribeToShard", e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_wins_over_the_initial_position() {
        let p = StartPosition::Latest;
        assert_eq!(
            p.resume(Some("42")),
            StartPosition::AfterSequenceNumber("42".into())
        );
        assert_eq!(p.resume(None), StartPosition::Latest);
    }

    #[test]
    fn positions_map_to_iterator_types() {
        let (kind, seq, at) = StartPosition::AtSequenceNumber("7".into()).parts();
        assert_eq!(kind, ShardIteratorType::AtSequenceNumber);
        assert_eq!(seq.as_deref(), Some("7"));
        assert!(at.is_none());
        let sdk = StartPosition::AfterSequenceNumber("9".into())
            .to_sdk()
            .expect("valid");
        assert_eq!(sdk.r#type(), &ShardIteratorType::AfterSequenceNumber);
        assert_eq!(sdk.sequence_number(), Some("9"));
    }
}
