//! How fast a shard is read: the record buckets, the adaptive strategy's backoff and pause
//! before a read, and the backoff after a failed read.

use std::num::NonZeroU32;
use std::time::Duration;

use super::{ShardConsumer, ShardExit, State};

/// A token bucket of records (`governor`) that holds a fifth of a second's worth, so a rate
/// holds over short windows too.
#[derive(Debug)]
pub(crate) struct RecordBucket {
    limiter: governor::DefaultDirectRateLimiter,
    burst: NonZeroU32,
}

impl RecordBucket {
    pub(crate) fn new(per_second: NonZeroU32) -> Self {
        let burst = NonZeroU32::new((per_second.get() / 5).max(1)).unwrap_or(NonZeroU32::MIN);
        RecordBucket {
            limiter: governor::RateLimiter::direct(
                governor::Quota::per_second(per_second).allow_burst(burst),
            ),
            burst,
        }
    }

    /// Waits until `n` records may pass, asking at most a full bucket at a time.
    async fn take(&self, n: usize) {
        let mut left = u32::try_from(n).unwrap_or(u32::MAX);
        while let Some(ask) = NonZeroU32::new(left.min(self.burst.get())) {
            // cannot fail: `ask` never exceeds the burst
            let _ = self.limiter.until_n_ready(ask).await;
            left -= ask.get();
        }
    }
}

/// Error codes of throttling: backed off, never counted as errors.
fn is_throttle(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "ProvisionedThroughputExceededException"
                | "LimitExceededException"
                | "KMSThrottlingException"
                | "ThrottlingException"
        )
    )
}

/// The first wait after a throttled call.
const FIRST_THROTTLE_WAIT: Duration = Duration::from_millis(200);
/// The longest wait after throttled calls in a row.
const MAX_THROTTLE_WAIT: Duration = Duration::from_secs(10);

/// The longest wait after a throttled call, given the last one (zero when the call before was
/// not throttled): [`FIRST_THROTTLE_WAIT`] (or the least time between two reads, when longer),
/// then doubled, up to [`MAX_THROTTLE_WAIT`].
fn throttle_cap(last: Duration, min_read_interval: Duration) -> Duration {
    if last.is_zero() {
        FIRST_THROTTLE_WAIT.max(min_read_interval)
    } else {
        (last * 2).min(MAX_THROTTLE_WAIT)
    }
}

/// A wait between half of `cap` and all of it, at random.
fn jittered(cap: Duration) -> Duration {
    cap.mul_f64(rand::random_range(0.5..=1.0))
}

/// The largest `Limit` of a GetRecords call.
const MAX_FETCH: usize = 10_000;

impl ShardConsumer {
    /// The wait the adaptive strategy asks for before the next read, if any: a backoff while it
    /// says so, and once per read the backpressure pause that spaces reads out behind a slow or
    /// failing handler.
    pub(super) fn pace(&mut self) -> Option<State> {
        if self.env.strategy.should_back_off(&self.key) {
            return Some(State::Backoff {
                delay: self.env.strategy.delay(&self.key),
                then: Box::new(State::Fetching),
            });
        }
        let pause = self.env.strategy.fetch_pause(&self.key);
        if !self.paused && !pause.is_zero() && self.max_batches.is_none() {
            self.paused = true;
            return Some(State::Backoff {
                delay: pause,
                then: Box::new(State::Fetching),
            });
        }
        self.paused = false;
        None
    }

    /// How many records to ask for: the strategy's batch size, and for an on-demand batch at most
    /// the caller's batch size.
    pub(super) fn fetch_limit(&self) -> usize {
        let limit = self.env.strategy.batch_size(&self.key).clamp(1, MAX_FETCH);
        match self.max_batches {
            Some(_) => limit.min(self.env.options.get_batch_size()),
            None => limit,
        }
    }

    /// Whether the next read may start while this batch is handled: only for the continuous
    /// consumer, and not while the adaptive strategy asks this shard to slow down. The limit to
    /// read with when it may.
    pub(super) fn read_ahead_limit(&self) -> Option<usize> {
        (self.max_batches.is_none()
            && !self.env.strategy.should_back_off(&self.key)
            && self.env.strategy.fetch_pause(&self.key).is_zero())
        .then(|| self.env.strategy.batch_size(&self.key).clamp(1, MAX_FETCH))
    }

    /// After a failed read: throttling backs off (see `next_throttle_delay`) and is never an
    /// error, nor a failed batch for the adaptive strategy;
    /// other errors back off exponentially from the poll interval (capped at 30 s) and release
    /// the lease after `max_fetch_errors` in a row.
    pub(super) fn fetch_error(&mut self, code: Option<&str>, text: String, then: State) -> State {
        if is_throttle(code) {
            let delay = self.next_throttle_delay();
            tracing::debug!(shard = %self.shard, ?delay, "mq-kinesis: throttled, backing off");
            return State::Backoff {
                delay,
                then: Box::new(then),
            };
        }
        self.fetch_errors += 1;
        tracing::warn!(shard = %self.shard, errors = self.fetch_errors, error = %text, "mq-kinesis: fetch failed");
        if self.fetch_errors >= self.env.shard_options.get_max_fetch_errors() {
            return State::Releasing(ShardExit::Failed(text));
        }
        let base = self
            .env
            .options
            .get_poll_interval()
            .max(Duration::from_millis(50));
        State::Backoff {
            delay: (base * 2u32.saturating_pow(self.fetch_errors.min(16)))
                .min(Duration::from_secs(30)),
            then: Box::new(then),
        }
    }

    /// The wait after a throttled call: from [`FIRST_THROTTLE_WAIT`], doubled after each throttle
    /// in a row up to [`MAX_THROTTLE_WAIT`], with jitter (between half and all of it) so that the
    /// readers of a shard do not retry in step. A successful read starts it over.
    fn next_throttle_delay(&mut self) -> Duration {
        let cap = throttle_cap(
            self.throttle_delay,
            self.env.shard_options.get_min_read_interval(),
        );
        self.throttle_delay = cap;
        jittered(cap)
    }

    /// Waits until the shard's and the instance's buckets let `n` records through. False when
    /// stopped meanwhile.
    pub(super) async fn take_tokens(&self, n: usize) -> bool {
        let take = async {
            if let Some(b) = &self.shard_limiter {
                b.take(n).await;
            }
            if let Some(b) = &self.env.instance_limiter {
                b.take(n).await;
            }
        };
        tokio::select! {
            () = take => true,
            _ = self.stop.cancelled() => false,
            _ = self.renewal.lost().cancelled() => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_codes_are_not_errors() {
        assert!(is_throttle(Some("ProvisionedThroughputExceededException")));
        assert!(is_throttle(Some("ThrottlingException")));
        assert!(!is_throttle(Some("ExpiredIteratorException")));
        assert!(!is_throttle(None));
    }

    #[test]
    fn throttle_waits_start_short_double_and_stop_at_the_cap() {
        let min_read = Duration::from_millis(200);
        let mut caps = Vec::new();
        let mut last = Duration::ZERO;
        for _ in 0..10 {
            last = throttle_cap(last, min_read);
            caps.push(last.as_millis());
        }
        println!("throttle wait caps (ms): {caps:?}");
        assert_eq!(
            caps,
            [
                200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000, 10_000
            ]
        );
        // a longer least interval between reads is the first wait
        assert_eq!(
            throttle_cap(Duration::ZERO, Duration::from_secs(1)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn throttle_waits_are_jittered_between_half_and_all_of_the_cap() {
        let cap = Duration::from_millis(800);
        let waits: Vec<Duration> = (0..200).map(|_| jittered(cap)).collect();
        let (lo, hi) = (
            waits.iter().min().copied().unwrap_or_default(),
            waits.iter().max().copied().unwrap_or_default(),
        );
        println!("200 waits for a cap of 800 ms: from {lo:?} to {hi:?}");
        assert!(waits.iter().all(|w| *w >= cap / 2 && *w <= cap));
        // spread out, not in step: the draws cover most of the range
        assert!(hi - lo > cap / 4, "{lo:?}..{hi:?}");
    }

    #[tokio::test]
    async fn a_bucket_passes_more_than_its_burst_over_time() {
        let bucket = RecordBucket::new(NonZeroU32::new(50).expect("non-zero"));
        let started = std::time::Instant::now();
        bucket.take(30).await;
        // a burst of 10, then 20 more at 50/s: about 0.4 s
        assert!(started.elapsed() >= Duration::from_millis(300));
    }
}
