//! Retry policy: how many deliveries a message gets and how long to wait between them.

use std::time::Duration;

use rand::Rng;

use crate::error::{Error, Result};
use crate::message::Message;

/// Exponential backoff with jitter and a cap on deliveries.
///
/// The delay before retry `n` (after the `n`-th failed delivery) is
/// `base × multiplier^(n-1)`, capped at `max_delay`, then moved by up to `±jitter` of itself. A
/// message's own `retry_delay` replaces `base`, and its `max_attempts` replaces the policy's.
///
/// Defaults: 4 deliveries (the first and 3 retries, as the original), base 30 s (the original's
/// `retry_after` default), multiplier 2, cap 15 min, jitter 0.2.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use mq_core::RetryPolicy;
///
/// let policy = RetryPolicy::default()
///     .max_attempts(5)
///     .base_delay(Duration::from_secs(1))
///     .jitter(0.0);
/// assert_eq!(policy.backoff(1, None), Duration::from_secs(1));
/// assert_eq!(policy.backoff(3, None), Duration::from_secs(4));
/// # policy.validate()?;
/// # Ok::<(), mq_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    max_attempts: u32,
    base_delay: Duration,
    max_delay: Duration,
    multiplier: f64,
    jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_secs(30),
            max_delay: Duration::from_secs(15 * 60),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    crate::__option_setters! {
        /// Deliveries allowed in all, the first included (1 = never retry).
        max_attempts(n: u32) n;
        /// Delay before the first retry.
        base_delay(d: Duration) d;
        /// Longest delay between two deliveries.
        max_delay(d: Duration) d;
        /// Growth of the delay per retry (at least 1).
        multiplier(m: f64) m;
        /// Fraction of the delay randomly added or removed, from 0 to 1.
        jitter(j: f64) j;
    }

    /// The policy's cap on deliveries.
    pub fn get_max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Checks every field; the error names the field.
    pub fn validate(&self) -> Result<()> {
        if self.max_attempts == 0 {
            return Err(Error::invalid_option(
                "retry.max_attempts",
                "must be at least 1 (1 means no retry)",
            ));
        }
        if !(self.multiplier >= 1.0 && self.multiplier.is_finite()) {
            return Err(Error::invalid_option(
                "retry.multiplier",
                format!("must be a finite number >= 1, got {}", self.multiplier),
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(Error::invalid_option(
                "retry.jitter",
                format!("must be between 0 and 1, got {}", self.jitter),
            ));
        }
        if self.max_delay < self.base_delay {
            return Err(Error::invalid_option(
                "retry.max_delay",
                "must not be shorter than base_delay",
            ));
        }
        Ok(())
    }

    /// Deliveries allowed for `message`: its own `max_attempts`, else the policy's.
    pub fn attempts_allowed(&self, message: &Message) -> u32 {
        message.max_attempts.unwrap_or(self.max_attempts).max(1)
    }

    /// True when `message` (whose `attempts` counts the delivery just made) may not be delivered
    /// again.
    pub fn is_exhausted(&self, message: &Message) -> bool {
        message.attempts >= self.attempts_allowed(message)
    }

    /// The delay before the retry that follows failed delivery number `attempt` (1-based), with
    /// `base` replacing the policy's base delay when given.
    pub fn backoff(&self, attempt: u32, base: Option<Duration>) -> Duration {
        let base = base.unwrap_or(self.base_delay).as_secs_f64();
        let exp = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let raw = (base * self.multiplier.powi(exp)).min(self.max_delay.as_secs_f64());
        let jittered = if self.jitter > 0.0 && raw > 0.0 {
            let f = rand::rng().random_range(-self.jitter..=self.jitter);
            raw * (1.0 + f)
        } else {
            raw
        };
        Duration::try_from_secs_f64(jittered.max(0.0)).unwrap_or(self.max_delay)
    }

    /// The delay before retrying `message` after the delivery that just failed.
    pub fn delay_for(&self, message: &Message) -> Duration {
        self.backoff(message.attempts.max(1), message.retry_delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_and_capped() {
        let p = RetryPolicy::default()
            .base_delay(Duration::from_secs(10))
            .max_delay(Duration::from_secs(35))
            .jitter(0.0);
        assert_eq!(p.backoff(1, None), Duration::from_secs(10));
        assert_eq!(p.backoff(2, None), Duration::from_secs(20));
        assert_eq!(p.backoff(3, None), Duration::from_secs(35));
        assert_eq!(p.backoff(40, None), Duration::from_secs(35));
        assert_eq!(
            p.backoff(2, Some(Duration::from_secs(1))),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn jitter_stays_in_band() {
        let p = RetryPolicy::default()
            .base_delay(Duration::from_secs(10))
            .jitter(0.5);
        for _ in 0..1000 {
            let d = p.backoff(1, None).as_secs_f64();
            assert!((5.0..=15.0).contains(&d), "{d}");
        }
    }

    #[test]
    fn validation_names_the_field() {
        let err = RetryPolicy::default().jitter(2.0).validate().unwrap_err();
        assert!(err.to_string().contains("retry.jitter"));
        assert!(RetryPolicy::default().max_attempts(0).validate().is_err());
        assert!(RetryPolicy::default().multiplier(0.5).validate().is_err());
        assert!(RetryPolicy::default().validate().is_ok());
    }
}
