//! Deadlines on the lease-store calls of a shard consumer: a call that does not answer in time
//! fails like any other failed call (it is retried, or the lease moves to another consumer), and
//! a stop past its grace period never waits on it.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// Runs `call` for at most `limit`, and only until `abandon` (when given) is cancelled; past
/// either, the call is dropped and [`Error::Deadline`] returned.
pub(crate) async fn within<T>(
    operation: &'static str,
    limit: Duration,
    abandon: Option<&CancellationToken>,
    call: impl Future<Output = Result<T>>,
) -> Result<T> {
    let started = Instant::now();
    let never = CancellationToken::new();
    let abandon = abandon.unwrap_or(&never);
    tokio::select! {
        answer = tokio::time::timeout(limit, call) => {
            answer.unwrap_or(Err(Error::Deadline { operation, after: limit }))
        }
        _ = abandon.cancelled() => Err(Error::Deadline { operation, after: started.elapsed() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_call_past_its_deadline_is_an_error_that_names_it() {
        let e = within(
            "checkpoint",
            Duration::from_millis(20),
            None,
            std::future::pending::<Result<()>>(),
        )
        .await
        .expect_err("deadline");
        assert!(e.to_string().contains("checkpoint got no answer"), "{e}");
    }

    #[tokio::test]
    async fn an_abandoned_call_returns_at_once() {
        let stop = CancellationToken::new();
        stop.cancel();
        let started = std::time::Instant::now();
        let e = within(
            "renew",
            Duration::from_secs(60),
            Some(&stop),
            std::future::pending::<Result<()>>(),
        )
        .await;
        assert!(e.is_err());
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
