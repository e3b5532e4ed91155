//! The rows a store binds into its statements: a message as inserted (with due times as
//! offsets for the server's clock), statements cut by rows and bytes, and completions.

use chrono::{DateTime, Utc};
use mq_core::Message;
use mq_core::backend::{Completion, CompletionAction};

/// A message as bound into an insert.
#[derive(Debug)]
pub(crate) struct InsertRow {
    pub(crate) id: String,
    pub(crate) message_type: String,
    pub(crate) payload: String,
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) execute_at: DateTime<Utc>,
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) expires_at: Option<DateTime<Utc>>,
    /// `execute_at` as an offset from the publisher's now, for servers that apply it to their
    /// own clock (a clock skew then moves nothing early or late).
    #[cfg_attr(not(any(feature = "postgres", feature = "mysql")), allow(dead_code))]
    pub(crate) execute_in_us: i64,
    /// `expires_at` the same way.
    #[cfg_attr(not(any(feature = "postgres", feature = "mysql")), allow(dead_code))]
    pub(crate) expires_in_us: Option<i64>,
    pub(crate) max_attempts: Option<i32>,
    pub(crate) retry_delay_ms: Option<i64>,
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) partition_key: Option<String>,
    pub(crate) metadata: Option<String>,
    pub(crate) priority: i16,
    pub(crate) unique_key: Option<String>,
    pub(crate) unique_window_ms: Option<i64>,
}

impl InsertRow {
    pub(crate) fn of(m: &Message) -> Self {
        InsertRow {
            id: m.id.as_str().to_owned(),
            message_type: m.message_type.clone(),
            payload: m.payload.to_string(),
            execute_at: m.execute_at,
            expires_at: m.expires_at,
            execute_in_us: offset_micros(m.created_at, m.execute_at),
            expires_in_us: m.expires_at.map(|at| offset_micros(m.created_at, at)),
            max_attempts: m.max_attempts.map(|n| i32::try_from(n).unwrap_or(i32::MAX)),
            retry_delay_ms: m
                .retry_delay
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            created_at: m.created_at,
            partition_key: m.partition_key.clone(),
            metadata: if m.metadata.is_empty() {
                None
            } else {
                serde_json::to_string(&m.metadata).ok()
            },
            priority: m.priority,
            unique_key: m.unique_key.clone(),
            unique_window_ms: m
                .unique_window
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        }
    }
}

impl InsertRow {
    /// The bytes this row adds to a statement, near enough to cut statements by size.
    pub(crate) fn bytes(&self) -> usize {
        256 + self.id.len()
            + self.message_type.len()
            + self.payload.len()
            + self.partition_key.as_ref().map_or(0, String::len)
            + self.metadata.as_ref().map_or(0, String::len)
            + self.unique_key.as_ref().map_or(0, String::len)
    }
}

/// The most bytes of rows one insert statement carries: a publish of large messages is cut into
/// statements well inside the servers' packet limits (MySQL's `max_allowed_packet` is 16 MiB by
/// default).
pub(crate) const INSERT_BYTES: usize = 8 << 20;

/// Cuts `rows` into runs of at most `max_rows` rows and [`INSERT_BYTES`] bytes (a row larger
/// than that goes alone), as index ranges.
pub(crate) fn insert_chunks(rows: &[InsertRow], max_rows: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, row) in rows.iter().enumerate() {
        let b = row.bytes();
        if i > start && (i - start == max_rows || bytes + b > INSERT_BYTES) {
            out.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += b;
    }
    if start < rows.len() {
        out.push(start..rows.len());
    }
    out
}

/// One completion as bound into the completion statement.
#[derive(Debug)]
pub struct CompletionRow {
    pub(crate) id: String,
    pub(crate) attempt: i32,
    pub(crate) status: &'static str,
    /// When a rescheduled message is due, on this process's clock.
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) execute_at: Option<DateTime<Utc>>,
    /// The same as a delay from now, for servers that apply it on their own clock (so a skew
    /// between this process's clock and the server's moves nothing early or late).
    #[cfg_attr(not(any(feature = "postgres", feature = "mysql")), allow(dead_code))]
    pub(crate) delay_us: Option<i64>,
    pub(crate) last_error: Option<String>,
    /// 1 when this delivery is not counted ([`CompletionAction::Release`]), else 0.
    pub(crate) uncount: i32,
}

pub(crate) fn completion_rows(completions: &[Completion]) -> Vec<CompletionRow> {
    let now = Utc::now();
    completions
        .iter()
        .map(|c| {
            let (status, execute_at, last_error, uncount) = match &c.action {
                CompletionAction::Ack => ("executed", None, None, 0),
                CompletionAction::Retry { execute_at, error } => (
                    "scheduled",
                    Some(*execute_at),
                    error.as_ref().map(ToString::to_string),
                    0,
                ),
                CompletionAction::Release => ("scheduled", Some(now), None, 1),
                CompletionAction::Finish { status, error } => {
                    (status.as_str(), None, Some(error.to_string()), 0)
                }
                // Future actions: keep the message held; its lease lapses and it is redelivered.
                _ => ("processing", None, None, 0),
            };
            CompletionRow {
                id: c.claim.id.as_str().to_owned(),
                attempt: i32::try_from(c.claim.attempt).unwrap_or(i32::MAX),
                status,
                execute_at,
                delay_us: execute_at.map(|at| offset_micros(now, at).max(0)),
                last_error,
                uncount,
            }
        })
        .collect()
}

/// How far after `now` the instant `at` is (negative when before), in microseconds, for the
/// server to add to its own clock. `at` is held between 1970 and a day short of
/// [`latest_time`](mq_core::latest_time), so a server clock somewhat ahead of ours cannot push
/// "never" past the largest time a column can store.
pub(crate) fn offset_micros(now: DateTime<Utc>, at: DateTime<Utc>) -> i64 {
    let latest = mq_core::latest_time() - chrono::Duration::days(1);
    let at = at.clamp(DateTime::<Utc>::UNIX_EPOCH, latest);
    (at - now).num_microseconds().unwrap_or(i64::MAX)
}
