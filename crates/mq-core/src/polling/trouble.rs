//! [`Trouble`]: how a worker reports a store that keeps failing.

use std::time::Duration;

use tokio::time::Instant;

use crate::dead_letter::ErrorChain;
use crate::error::Error;
use crate::queue_name::QueueName;

/// How a worker reports a failing store: the first failure at once, then at most one line
/// every [`Trouble::EVERY`] with how many failures it stood for, and one line when it recovers,
/// so an outage is visible at once without flooding the log.
#[derive(Debug, Default)]
pub(super) struct Trouble {
    since: Option<Instant>,
    last_logged: Option<Instant>,
    failures: u64,
}

impl Trouble {
    const EVERY: Duration = Duration::from_secs(30);

    /// Records a failure; true when it was logged.
    pub(super) fn failed(&mut self, queue: &QueueName, consumer: &str, e: &Error) -> bool {
        let now = Instant::now();
        self.failures += 1;
        let since = *self.since.get_or_insert(now);
        if self
            .last_logged
            .is_some_and(|at| now.duration_since(at) < Self::EVERY)
        {
            return false;
        }
        self.last_logged = Some(now);
        tracing::warn!(queue = %queue, consumer = %consumer, error = %ErrorChain::from_error(e),
            failures = self.failures, failing_for = ?now.duration_since(since),
            "mq: claiming failed; retrying with backoff");
        true
    }

    pub(super) fn recovered(&mut self, queue: &QueueName, consumer: &str) {
        if let Some(since) = self.since.take() {
            tracing::info!(queue = %queue, consumer = %consumer, failures = self.failures,
                after = ?since.elapsed(), "mq: claiming works again");
        }
        self.failures = 0;
        self.last_logged = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn store_trouble_is_logged_at_once_then_rate_limited() {
        let q = QueueName::new("q").unwrap();
        let e = Error::backend("sql", "claim", std::io::Error::other("connection refused"));
        let mut t = Trouble::default();
        assert!(t.failed(&q, "c", &e), "the first failure is logged at once");
        assert!(!t.failed(&q, "c", &e));
        tokio::time::advance(Trouble::EVERY).await;
        assert!(t.failed(&q, "c", &e), "then once per interval");
        t.recovered(&q, "c");
        assert!(t.failed(&q, "c", &e), "a new outage is logged at once");
    }
}
