//! Adaptive batch sizing and fetch delays per shard: the trait and the AIMD strategy.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Identifies a shard of a stream. State is kept per (stream, shard), because shard ids such as
/// `shardId-000000000000` repeat across streams (the original mixed them up).
///
/// # Examples
///
/// ```
/// use mq_core::backend::ShardKey;
///
/// let a = ShardKey::new("orders", "shardId-000000000000");
/// let b = ShardKey::new("emails", "shardId-000000000000");
/// assert_ne!(a, b);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardKey {
    /// The stream (or queue) name.
    pub stream: String,
    /// The shard id.
    pub shard: String,
}

impl ShardKey {
    /// A key for `shard` of `stream`.
    pub fn new(stream: impl Into<String>, shard: impl Into<String>) -> Self {
        ShardKey {
            stream: stream.into(),
            shard: shard.into(),
        }
    }
}

/// What one batch did, reported to the strategy.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct BatchResult {
    /// Records fetched.
    pub record_count: usize,
    /// Records handled successfully.
    pub success_count: usize,
    /// Records that failed.
    pub failure_count: usize,
    /// Handler time.
    pub processing_time: Duration,
    /// Message types in the batch.
    pub message_types: Vec<String>,
    /// Message types that failed.
    pub failed_message_types: Vec<String>,
    /// The fetch was throttled.
    pub throttled: bool,
    /// The batch was skipped as a poison pill.
    pub poison_pill: bool,
}

impl BatchResult {
    /// A clean batch of `records` records.
    pub fn success(records: usize, processing_time: Duration) -> Self {
        BatchResult {
            record_count: records,
            success_count: records,
            processing_time,
            ..BatchResult::default()
        }
    }

    /// A batch with `failed` failures out of `records`.
    pub fn failure(records: usize, failed: usize) -> Self {
        BatchResult {
            record_count: records,
            success_count: records.saturating_sub(failed),
            failure_count: failed,
            ..BatchResult::default()
        }
    }

    /// A throttled fetch.
    pub fn throttled() -> Self {
        BatchResult {
            throttled: true,
            ..BatchResult::default()
        }
    }

    /// Sets the message types of the batch and which of them failed.
    pub fn with_types(mut self, types: Vec<String>, failed: Vec<String>) -> Self {
        self.message_types = types;
        self.failed_message_types = failed;
        self
    }

    fn is_success(&self) -> bool {
        self.failure_count == 0 && !self.throttled && !self.poison_pill
    }
}

/// The state of a shard (or an aggregate of all shards) as the strategy sees it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct AdaptiveSnapshot {
    /// Current fetch size.
    pub batch_size: usize,
    /// Current delay between fetches when idle or failing.
    pub delay: Duration,
    /// Successes in a row.
    pub consecutive_successes: u32,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// When the timed backoff ends, if one is in force.
    pub backoff_until: Option<Instant>,
    /// Message types failing more than half of the time in the rolling window, sorted.
    pub hot_types: Vec<String>,
}

/// Chooses fetch sizes and delays per shard from batch results.
///
/// # Examples
///
/// ```
/// use mq_core::backend::{AdaptiveStrategy, AimdStrategy, BatchResult, ShardKey};
///
/// let aimd = AimdStrategy::default();
/// let shard = ShardKey::new("orders", "shard-0");
/// assert_eq!(aimd.batch_size(&shard), 50);
/// aimd.record(&shard, &BatchResult::failure(50, 1));
/// assert_eq!(aimd.batch_size(&shard), 25);
/// ```
pub trait AdaptiveStrategy: Send + Sync + fmt::Debug + 'static {
    /// Records to fetch next.
    fn batch_size(&self, shard: &ShardKey) -> usize;
    /// Delay before the next fetch when idle or after a failure.
    fn delay(&self, shard: &ShardKey) -> Duration;
    /// True while the shard should not fetch at all.
    fn should_back_off(&self, shard: &ShardKey) -> bool;
    /// Reports a batch.
    fn record(&self, shard: &ShardKey, result: &BatchResult);
    /// Pause before the next fetch of a shard that is busy, not idle: how a slow or failing
    /// handler slows the reading down (backpressure). Zero (the default) reads again at once.
    fn fetch_pause(&self, _shard: &ShardKey) -> Duration {
        Duration::ZERO
    }
    /// The state of `shard`, or an aggregate of all shards when `None`.
    fn snapshot(&self, shard: Option<&ShardKey>) -> AdaptiveSnapshot;
}

/// Declares `AimdOptions` from one list: each field with its type, default and setter docs, so a
/// new parameter is written once.
macro_rules! aimd_options {
    ($($(#[$doc:meta])* $name:ident: $ty:ty = $default:expr),* $(,)?) => {
        /// Parameters of [`AimdStrategy`]; the defaults are the original's.
        ///
        /// # Examples
        ///
        /// ```
        /// use mq_core::backend::AimdOptions;
        ///
        /// let opts = AimdOptions::default().add_step(5).max_batch(200);
        /// assert_eq!(opts.get_max_batch(), 200);
        /// ```
        #[derive(Debug, Clone, PartialEq)]
        pub struct AimdOptions {
            $($name: $ty,)*
        }

        impl Default for AimdOptions {
            fn default() -> Self {
                AimdOptions { $($name: $default,)* }
            }
        }

        impl AimdOptions {
            $(
                $(#[$doc])*
                pub fn $name(mut self, v: $ty) -> Self {
                    self.$name = v;
                    self
                }
            )*
        }
    };
}

aimd_options! {
    /// Consecutive successes needed for one additive step (default 3).
    successes_before_increase: u32 = 3,
    /// Additive increase of the batch size (default 10).
    add_step: usize = 10,
    /// Multiplicative decrease on failure (default 0.5).
    decrease_factor: f64 = 0.5,
    /// Smallest batch after a decrease (default 10).
    min_batch: usize = 10,
    /// Largest batch after an increase (default 500).
    max_batch: usize = 500,
    /// Batch size of a new shard (default 50).
    initial_batch: usize = 50,
    /// Delay of a new shard and after a success (default 5 s).
    base_delay: Duration = Duration::from_millis(5000),
    /// Delay growth per failure (default 1.5).
    delay_multiplier: f64 = 1.5,
    /// Delay cap (default 30 s).
    max_delay: Duration = Duration::from_millis(30_000),
    /// Consecutive failures before a timed backoff (default 10).
    backoff_threshold: u32 = 10,
    /// Backoff cap (default 60 s).
    max_backoff: Duration = Duration::from_millis(60_000),
    /// Per-type history length (default 100).
    rolling_window: usize = 100,
    /// A successful batch whose handler took longer than this is slow: the batch shrinks and a
    /// fetch pause starts or doubles (default 2 s).
    slow_batch: Duration = Duration::from_secs(2),
    /// The first fetch pause after a slow or failed batch (default 100 ms).
    min_pause: Duration = Duration::from_millis(100),
    /// Fetch pause cap (default 10 s).
    max_pause: Duration = Duration::from_secs(10),
}

impl AimdOptions {
    /// The largest batch.
    pub fn get_max_batch(&self) -> usize {
        self.max_batch
    }
}

#[derive(Debug, Clone)]
struct ShardState {
    batch: usize,
    delay: Duration,
    successes: u32,
    failures: u32,
    backoff_until: Option<Instant>,
    pause: Duration,
}

#[derive(Debug, Default)]
struct TypeStats {
    history: VecDeque<(String, bool)>,
    counts: HashMap<String, (u32, u32)>,
}

/// Additive-increase / multiplicative-decrease, as the original `AIMDStrategy`, with state per
/// (stream, shard) and an O(1) rolling window of message types.
///
/// Success (no failures, not throttled, not a poison pill): after `successes_before_increase` in a
/// row the batch grows by `add_step` (capped at `max_batch`) and the delay returns to `base_delay`.
/// Failure: the batch shrinks by `decrease_factor` (floored at `min_batch`), the delay grows by
/// `delay_multiplier` (capped at `max_delay`), and from `backoff_threshold` failures in a row the
/// shard backs off for `2^(failures - threshold)` seconds (capped at `max_backoff`).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use mq_core::backend::{AdaptiveStrategy, AimdStrategy, BatchResult, ShardKey};
///
/// let aimd = AimdStrategy::default();
/// let s = ShardKey::new("orders", "shard-0");
/// for _ in 0..3 {
///     aimd.record(&s, &BatchResult::success(50, Duration::from_millis(10)));
/// }
/// assert_eq!(aimd.batch_size(&s), 60);
/// ```
#[derive(Debug, Default)]
pub struct AimdStrategy {
    options: AimdOptions,
    state: Mutex<AimdState>,
}

#[derive(Debug, Default)]
struct AimdState {
    shards: HashMap<ShardKey, ShardState>,
    types: TypeStats,
}

impl AimdStrategy {
    /// A strategy with `options`.
    pub fn new(options: AimdOptions) -> Self {
        AimdStrategy {
            options,
            state: Mutex::default(),
        }
    }

    fn with_shard<R>(
        &self,
        shard: &ShardKey,
        f: impl FnOnce(&mut ShardState, &mut TypeStats) -> R,
    ) -> R {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let AimdState { shards, types } = &mut *guard;
        let st = shards.entry(shard.clone()).or_insert_with(|| ShardState {
            batch: self.options.initial_batch,
            delay: self.options.base_delay,
            successes: 0,
            failures: 0,
            backoff_until: None,
            pause: Duration::ZERO,
        });
        f(st, types)
    }

    fn hot_types(types: &TypeStats) -> Vec<String> {
        let mut hot: Vec<String> = types
            .counts
            .iter()
            .filter(|(_, (ok, bad))| f64::from(*bad) / f64::from(ok + bad).max(1.0) > 0.5)
            .map(|(t, _)| t.clone())
            .collect();
        hot.sort();
        hot
    }
}

impl AdaptiveStrategy for AimdStrategy {
    fn batch_size(&self, shard: &ShardKey) -> usize {
        self.with_shard(shard, |s, _| s.batch)
    }

    fn delay(&self, shard: &ShardKey) -> Duration {
        self.with_shard(shard, |s, _| s.delay)
    }

    fn should_back_off(&self, shard: &ShardKey) -> bool {
        self.with_shard(shard, |s, _| match s.backoff_until {
            None => false,
            Some(until) if Instant::now() >= until => {
                s.backoff_until = None;
                false
            }
            Some(_) => true,
        })
    }

    fn fetch_pause(&self, shard: &ShardKey) -> Duration {
        self.with_shard(shard, |s, _| s.pause)
    }

    fn record(&self, shard: &ShardKey, result: &BatchResult) {
        let o = &self.options;
        self.with_shard(shard, |s, types| {
            let grow = |p: Duration| (p * 2).clamp(o.min_pause, o.max_pause.max(o.min_pause));
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss
            )]
            let shrink = |batch: usize| {
                ((batch as f64 * o.decrease_factor).floor() as usize).max(o.min_batch)
            };
            if result.is_success() && result.processing_time > o.slow_batch {
                // backpressure: a slow handler gets smaller batches, further apart
                s.successes = 0;
                s.failures = 0;
                s.batch = shrink(s.batch);
                s.pause = grow(s.pause);
            } else if result.is_success() {
                s.pause /= 2;
                if s.pause < o.min_pause / 2 {
                    s.pause = Duration::ZERO;
                }
                s.successes += 1;
                s.failures = 0;
                if s.successes >= o.successes_before_increase {
                    s.batch = (s.batch + o.add_step).min(o.max_batch);
                    s.successes = 0;
                }
                s.delay = o.base_delay;
                s.backoff_until = None;
            } else {
                if !result.throttled {
                    s.pause = grow(s.pause);
                }
                s.failures += 1;
                s.successes = 0;
                s.batch = shrink(s.batch);
                s.delay = s.delay.mul_f64(o.delay_multiplier).min(o.max_delay);
                if s.failures >= o.backoff_threshold {
                    let exp = (s.failures - o.backoff_threshold).min(30);
                    let backoff = Duration::from_secs(1u64 << exp).min(o.max_backoff);
                    s.backoff_until = Some(Instant::now() + backoff);
                }
            }
            for t in &result.message_types {
                let ok = !result.failed_message_types.contains(t);
                types.history.push_back((t.clone(), ok));
                let c = types.counts.entry(t.clone()).or_default();
                if ok {
                    c.0 += 1
                } else {
                    c.1 += 1
                }
                while types.history.len() > o.rolling_window {
                    if let Some((old, was_ok)) = types.history.pop_front()
                        && let Some(c) = types.counts.get_mut(&old)
                    {
                        {
                            if was_ok {
                                c.0 -= 1
                            } else {
                                c.1 -= 1
                            }
                            if c.0 + c.1 == 0 {
                                types.counts.remove(&old);
                            }
                        }
                    }
                }
            }
        });
    }

    fn snapshot(&self, shard: Option<&ShardKey>) -> AdaptiveSnapshot {
        if let Some(k) = shard {
            return self.with_shard(k, |s, types| AdaptiveSnapshot {
                batch_size: s.batch,
                delay: s.delay,
                consecutive_successes: s.successes,
                consecutive_failures: s.failures,
                backoff_until: s.backoff_until,
                hot_types: Self::hot_types(types),
            });
        }
        let guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let n = guard.shards.len();
        if n == 0 {
            return AdaptiveSnapshot {
                batch_size: self.options.initial_batch,
                delay: self.options.base_delay,
                consecutive_successes: 0,
                consecutive_failures: 0,
                backoff_until: None,
                hot_types: Self::hot_types(&guard.types),
            };
        }
        let shards = guard.shards.values();
        #[allow(clippy::cast_possible_truncation)]
        let n32 = n as u32;
        AdaptiveSnapshot {
            batch_size: (shards.clone().map(|s| s.batch).sum::<usize>() + n / 2) / n,
            delay: shards.clone().map(|s| s.delay).sum::<Duration>() / n32,
            consecutive_successes: shards.clone().map(|s| s.successes).sum(),
            consecutive_failures: shards.clone().map(|s| s.failures).sum(),
            backoff_until: shards.filter_map(|s| s.backoff_until).max(),
            hot_types: Self::hot_types(&guard.types),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> ShardKey {
        ShardKey::new("stream", s)
    }
    fn ok() -> BatchResult {
        BatchResult::success(10, Duration::from_millis(1))
    }
    fn bad() -> BatchResult {
        BatchResult::failure(10, 1)
    }

    #[test]
    fn initial_state() {
        let a = AimdStrategy::default();
        let k = key("s");
        assert_eq!(a.batch_size(&k), 50);
        assert_eq!(a.delay(&k), Duration::from_secs(5));
        assert!(!a.should_back_off(&k));
        let snap = AimdStrategy::default().snapshot(None);
        assert_eq!(snap.batch_size, 50);
        assert!(snap.hot_types.is_empty());
    }

    #[test]
    fn increase_after_three_successes_not_two() {
        let a = AimdStrategy::default();
        let k = key("s");
        a.record(&k, &ok());
        a.record(&k, &ok());
        assert_eq!(a.batch_size(&k), 50);
        a.record(&k, &ok());
        assert_eq!(a.batch_size(&k), 60);
        for _ in 0..3 {
            a.record(&k, &ok());
        }
        assert_eq!(a.batch_size(&k), 70);
    }

    #[test]
    fn ceiling_respected() {
        let a = AimdStrategy::new(
            AimdOptions::default()
                .max_batch(60)
                .successes_before_increase(1),
        );
        let k = key("s");
        for _ in 0..5 {
            a.record(&k, &ok());
        }
        assert_eq!(a.batch_size(&k), 60);
    }

    #[test]
    fn failure_halves_with_floor_and_resets_streak() {
        let a = AimdStrategy::default();
        let k = key("s");
        a.record(&k, &bad());
        assert_eq!(a.batch_size(&k), 25);
        for _ in 0..10 {
            a.record(&k, &bad());
        }
        assert_eq!(a.batch_size(&k), 10);
        let b = AimdStrategy::default();
        b.record(&k, &ok());
        b.record(&k, &ok());
        b.record(&k, &bad());
        b.record(&k, &ok());
        assert_eq!(b.snapshot(Some(&k)).consecutive_successes, 1);
        assert_eq!(b.batch_size(&k), 25);
    }

    #[test]
    fn a_slow_handler_shrinks_batches_and_spaces_fetches_out() {
        let a = AimdStrategy::new(AimdOptions::default().slow_batch(Duration::from_millis(500)));
        let k = key("s");
        assert_eq!(a.fetch_pause(&k), Duration::ZERO);
        let slow = BatchResult::success(50, Duration::from_secs(1));
        a.record(&k, &slow);
        assert_eq!(
            (a.batch_size(&k), a.fetch_pause(&k)),
            (25, Duration::from_millis(100))
        );
        a.record(&k, &slow);
        a.record(&k, &slow);
        assert_eq!(
            (a.batch_size(&k), a.fetch_pause(&k)),
            (10, Duration::from_millis(400))
        );
        for _ in 0..7 {
            a.record(&k, &slow);
        }
        assert_eq!(a.fetch_pause(&k), Duration::from_secs(10), "capped");
        // fast batches halve the pause until it is gone
        for _ in 0..8 {
            a.record(&k, &ok());
        }
        assert_eq!(a.fetch_pause(&k), Duration::ZERO);
        // throttling has its own delay and leaves the pause alone
        a.record(&k, &BatchResult::throttled());
        assert_eq!(a.fetch_pause(&k), Duration::ZERO);
        a.record(&k, &bad());
        assert_eq!(a.fetch_pause(&k), Duration::from_millis(100));
    }

    #[test]
    fn delay_grows_caps_and_resets() {
        let a = AimdStrategy::new(AimdOptions::default().max_delay(Duration::from_millis(10_000)));
        let k = key("s");
        a.record(&k, &bad());
        assert_eq!(a.delay(&k), Duration::from_millis(7500));
        a.record(&k, &bad());
        assert_eq!(a.delay(&k), Duration::from_millis(10_000));
        a.record(&k, &ok());
        assert_eq!(a.delay(&k), Duration::from_millis(5000));
    }

    #[tokio::test(start_paused = true)]
    async fn timed_backoff_from_threshold() {
        let a = AimdStrategy::new(AimdOptions::default().backoff_threshold(3));
        let k = key("s");
        a.record(&k, &bad());
        a.record(&k, &bad());
        assert!(!a.should_back_off(&k));
        a.record(&k, &bad());
        assert!(a.should_back_off(&k));
        let until = a.snapshot(Some(&k)).backoff_until.unwrap();
        assert_eq!(until - Instant::now(), Duration::from_secs(1));
        a.record(&k, &bad());
        let until = a.snapshot(Some(&k)).backoff_until.unwrap();
        assert_eq!(until - Instant::now(), Duration::from_secs(2));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(!a.should_back_off(&k), "backoff clears after its time");
        a.record(&k, &bad());
        a.record(&k, &ok());
        assert!(!a.should_back_off(&k), "success clears backoff");
    }

    #[test]
    fn throttle_and_poison_shrink() {
        let a = AimdStrategy::default();
        let k = key("s");
        a.record(&k, &BatchResult::throttled());
        assert_eq!(a.batch_size(&k), 25);
        let p = BatchResult {
            poison_pill: true,
            ..BatchResult::default()
        };
        a.record(&k, &p);
        assert_eq!(a.batch_size(&k), 12);
    }

    #[test]
    fn hot_types_and_window() {
        let a = AimdStrategy::new(AimdOptions::default().rolling_window(5));
        let k = key("s");
        for _ in 0..3 {
            a.record(
                &k,
                &bad().with_types(vec!["bad".into(), "good".into()], vec!["bad".into()]),
            );
        }
        assert_eq!(a.snapshot(Some(&k)).hot_types, vec!["bad".to_string()]);
        for _ in 0..5 {
            a.record(&k, &ok().with_types(vec!["bad".into()], vec![]));
        }
        assert!(
            a.snapshot(None).hot_types.is_empty(),
            "window evicted old failures"
        );
    }

    #[test]
    fn isolation_by_stream_and_shard() {
        let a = AimdStrategy::default();
        let s1 = ShardKey::new("orders", "shardId-000000000000");
        let s2 = ShardKey::new("emails", "shardId-000000000000");
        a.record(&s1, &bad());
        assert_eq!(a.batch_size(&s1), 25);
        assert_eq!(a.batch_size(&s2), 50);
        assert_eq!(a.delay(&s2), Duration::from_secs(5));
        let agg = a.snapshot(None);
        assert_eq!(agg.batch_size, 38); // round((25 + 50) / 2)
        assert_eq!(agg.consecutive_failures, 1);
    }

    #[test]
    fn custom_step_and_factor_and_sawtooth() {
        let a = AimdStrategy::new(
            AimdOptions::default()
                .add_step(5)
                .successes_before_increase(1),
        );
        let k = key("s");
        a.record(&k, &ok());
        assert_eq!(a.batch_size(&k), 55);
        let b = AimdStrategy::new(AimdOptions::default().decrease_factor(0.75));
        b.record(&k, &bad());
        assert_eq!(b.batch_size(&k), 37);
        let c = AimdStrategy::new(AimdOptions::default().successes_before_increase(1));
        let mut seen = vec![];
        for r in [ok(), ok(), bad(), ok(), ok()] {
            c.record(&k, &r);
            seen.push(c.batch_size(&k));
        }
        assert_eq!(seen, vec![60, 70, 35, 45, 55]);
    }
}
