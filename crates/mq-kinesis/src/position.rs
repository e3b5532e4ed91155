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
    /// Right after `checkpoint` when there is one, `self` otherwise. A checkpoint inside an
    /// aggregated record resumes at that record (its user records already done are skipped by
    /// the reader).
    pub(crate) fn resume(&self, checkpoint: Option<&str>) -> StartPosition {
        match checkpoint.map(Checkpoint::parse) {
            Some(Checkpoint {
                sequence,
                done: Some(_),
            }) => StartPosition::AtSequenceNumber(sequence),
            Some(Checkpoint { sequence, .. }) => StartPosition::AfterSequenceNumber(sequence),
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

/// Digits of the sequence number in the long form of a checkpoint.
const LONG_SEQUENCE_DIGITS: usize = 120;
/// Digits of the count of user records done in the long form.
const LONG_DONE_DIGITS: usize = 7;
/// The count that means the whole record is done.
const WHOLE: u32 = 9_999_999;
const LONG_LEN: usize = 1 + LONG_SEQUENCE_DIGITS + LONG_DONE_DIGITS;

/// Where a shard consumer is: after a whole record, or inside a KPL-aggregated record after
/// its first `done` user records.
///
/// Stored as a decimal number, so that every lease and checkpoint store orders it as it orders
/// sequence numbers (by length, then digits):
///
/// - the short form is the sequence number itself, right after that record (what every
///   checkpoint was before aggregated records were read, and still is while none is cut);
/// - the long form is 128 digits: `9`, the sequence number zero-padded to 120 digits, then the
///   number of user records of that record done, zero-padded to 7 digits (`9999999`: all of
///   them). A shard takes the long form the first time a checkpoint falls inside an aggregated
///   record, and keeps it: a long checkpoint is longer, so it is after every short one, and long
///   checkpoints order by (sequence number, user records done).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    pub(crate) sequence: String,
    /// User records of `sequence` done; `None` for the whole record.
    pub(crate) done: Option<u32>,
}

impl Checkpoint {
    /// Right after the record `sequence`.
    pub(crate) fn after(sequence: &str) -> Self {
        Checkpoint {
            sequence: sequence.to_owned(),
            done: None,
        }
    }

    /// Inside the aggregated record `sequence`, its first `done` user records done.
    pub(crate) fn inside(sequence: &str, done: u32) -> Self {
        Checkpoint {
            sequence: sequence.to_owned(),
            done: Some(done.min(WHOLE - 1)),
        }
    }

    /// Reads a stored checkpoint, in either form.
    pub(crate) fn parse(stored: &str) -> Self {
        if Self::is_long(stored) {
            let seq = stored[1..=LONG_SEQUENCE_DIGITS].trim_start_matches('0');
            let done: u32 = stored[1 + LONG_SEQUENCE_DIGITS..].parse().unwrap_or(WHOLE);
            return Checkpoint {
                sequence: if seq.is_empty() { "0" } else { seq }.to_owned(),
                done: (done != WHOLE).then_some(done),
            };
        }
        Checkpoint::after(stored)
    }

    /// True for the long form.
    pub(crate) fn is_long(stored: &str) -> bool {
        stored.len() == LONG_LEN
            && stored.starts_with('9')
            && stored.bytes().all(|b| b.is_ascii_digit())
    }

    /// The text to store: the short form unless inside an aggregated record or `long` (the
    /// shard's checkpoint is in the long form already). `None` for a sequence number too long
    /// for the long form (no such sequence number is known).
    pub(crate) fn encode(&self, long: bool) -> Option<String> {
        if self.done.is_none() && !long {
            return Some(self.sequence.clone());
        }
        if self.sequence.len() > LONG_SEQUENCE_DIGITS
            || !self.sequence.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        Some(format!(
            "9{:0>seq$}{:0>done$}",
            self.sequence,
            self.done.unwrap_or(WHOLE),
            seq = LONG_SEQUENCE_DIGITS,
            done = LONG_DONE_DIGITS
        ))
    }

    /// How many user records of the record `sequence` are done, when this checkpoint is
    /// inside it.
    pub(crate) fn done_in(&self, sequence: &str) -> Option<u32> {
        self.done.filter(|_| self.sequence == sequence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare_sequence_numbers;
    use std::cmp::Ordering;

    #[test]
    fn checkpoints_inside_aggregates_order_like_positions_and_read_back() {
        let (s1, s2) = (
            "49590338271490256608559692538361571095921575989136588898",
            "49590338271490256608559692538361571095921575989136588999",
        );
        let short = Checkpoint::after(s1).encode(false).expect("short");
        assert_eq!(short, s1);
        let in1 = Checkpoint::inside(s1, 3).encode(false).expect("long");
        let in1b = Checkpoint::inside(s1, 12).encode(false).expect("long");
        let whole1 = Checkpoint::after(s1).encode(true).expect("long");
        let in2 = Checkpoint::inside(s2, 1).encode(true).expect("long");
        let whole2 = Checkpoint::after(s2).encode(true).expect("long");
        let ordered = [&short, &in1, &in1b, &whole1, &in2, &whole2];
        for w in ordered.windows(2) {
            assert_eq!(
                compare_sequence_numbers(w[0], w[1]),
                Ordering::Less,
                "{} < {}",
                w[0],
                w[1]
            );
            assert!(mq_core::backend::normalize_sequence_number(w[1]).is_ok());
        }
        assert_eq!(Checkpoint::parse(&in1), Checkpoint::inside(s1, 3));
        assert_eq!(Checkpoint::parse(&whole2), Checkpoint::after(s2));
        assert_eq!(Checkpoint::parse(s1), Checkpoint::after(s1));
        let p = StartPosition::Latest;
        assert_eq!(
            p.resume(Some(&in1)),
            StartPosition::AtSequenceNumber(s1.into())
        );
        assert_eq!(
            p.resume(Some(&whole1)),
            StartPosition::AfterSequenceNumber(s1.into())
        );
        assert_eq!(Checkpoint::parse(&in1).done_in(s1), Some(3));
        assert_eq!(Checkpoint::parse(&in1).done_in(s2), None);
    }

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
