//! Arguments shared by several commands: dead-letter filters and time parsing.

use chrono::{DateTime, Utc};
use clap::Args;
use mq::{DeadLetterFilter, EntryId, ReplayState};
use mq::{MessageId, QueueName};

/// Which dead letters a command applies to (every given criterion must hold).
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct FilterArgs {
    /// Only messages that failed in this queue.
    #[arg(long)]
    pub(crate) queue: Option<String>,
    /// Only messages of this type.
    #[arg(long = "type")]
    pub(crate) message_type: Option<String>,
    /// Only entries last failed at or after this time (RFC 3339, or an age such as 30m, 2h, 7d).
    #[arg(long)]
    pub(crate) since: Option<String>,
    /// Only entries last failed before this time (RFC 3339, or an age such as 30m, 2h, 7d).
    #[arg(long)]
    pub(crate) until: Option<String>,
    /// Only these entries (repeat the flag for several).
    #[arg(long = "id")]
    pub(crate) ids: Vec<String>,
    /// Only entries of messages with these original ids (repeatable).
    #[arg(long = "message-id")]
    pub(crate) message_ids: Vec<String>,
    /// Only entries whose error text contains this (case-insensitive).
    #[arg(long)]
    pub(crate) error: Option<String>,
    /// Only entries in this replay state: none, pending or done.
    #[arg(long)]
    pub(crate) state: Option<String>,
}

impl FilterArgs {
    /// The store filter, or a clear error naming the bad flag.
    pub(crate) fn to_filter(&self, now: DateTime<Utc>) -> anyhow::Result<DeadLetterFilter> {
        let mut f = DeadLetterFilter::default();
        if let Some(q) = &self.queue {
            f = f.queue(QueueName::new(q).map_err(|e| anyhow::anyhow!("--queue: {e}"))?);
        }
        if let Some(t) = &self.message_type {
            f = f.message_type(t);
        }
        if let Some(t) = &self.since {
            f = f.failed_after(parse_time(t, now).map_err(|e| anyhow::anyhow!("--since: {e}"))?);
        }
        if let Some(t) = &self.until {
            f = f.failed_before(parse_time(t, now).map_err(|e| anyhow::anyhow!("--until: {e}"))?);
        }
        if !self.ids.is_empty() {
            let ids = self
                .ids
                .iter()
                .map(|i| {
                    i.parse::<EntryId>()
                        .map_err(|e| anyhow::anyhow!("--id: {e}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            f = f.ids(ids);
        }
        if !self.message_ids.is_empty() {
            let ids = self
                .message_ids
                .iter()
                .map(|i| MessageId::new(i).map_err(|e| anyhow::anyhow!("--message-id: {e}")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            f = f.message_ids(ids);
        }
        if let Some(e) = &self.error {
            f = f.error_contains(e);
        }
        if let Some(s) = &self.state {
            f = f.replay_state(
                s.parse::<ReplayState>()
                    .map_err(|e| anyhow::anyhow!("--state: {e}"))?,
            );
        }
        Ok(f)
    }
}

/// An RFC 3339 time, or an age (`90s`, `30m`, `2h`, `7d`) counted back from `now`.
pub(crate) fn parse_time(s: &str, now: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: i64 = num.parse().map_err(|_| {
        anyhow::anyhow!("{s:?} is neither an RFC 3339 time nor an age such as 30m, 2h or 7d")
    })?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        other => anyhow::bail!("unknown unit {other:?} in {s:?}: use s, m, h, d or w"),
    };
    n.checked_mul(secs)
        .and_then(chrono::Duration::try_seconds)
        .and_then(|d| now.checked_sub_signed(d))
        .ok_or_else(|| anyhow::anyhow!("age {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse() {
        let now = Utc::now();
        assert_eq!(
            parse_time("2h", now).unwrap(),
            now - chrono::Duration::hours(2)
        );
        assert_eq!(
            parse_time("2026-01-02T03:04:05Z", now)
                .unwrap()
                .to_rfc3339(),
            "2026-01-02T03:04:05+00:00"
        );
        assert!(parse_time("2x", now).is_err());
        assert!(parse_time("soon", now).is_err());
        assert!(parse_time("99999999999999999d", now).is_err());
    }

    #[test]
    fn bad_filters_name_the_flag() {
        let args = FilterArgs {
            state: Some("later".into()),
            ..FilterArgs::default()
        };
        let err = args.to_filter(Utc::now()).unwrap_err().to_string();
        assert!(err.contains("--state"), "{err}");
        let args = FilterArgs {
            ids: vec!["nope".into()],
            ..FilterArgs::default()
        };
        assert!(
            args.to_filter(Utc::now())
                .unwrap_err()
                .to_string()
                .contains("--id")
        );
    }
}
