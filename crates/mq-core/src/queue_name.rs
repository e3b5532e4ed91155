//! Queue names and the opt-in resolver that reproduces the original's environment suffix.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The longest queue name accepted: the limit of a Kinesis stream name, so every name works on every
/// backend.
pub const MAX_QUEUE_NAME_LEN: usize = 128;

/// A validated queue name: 1 to 128 characters of `A-Z a-z 0-9 _ . -`.
///
/// The rules are those of a Kinesis stream name, so a name that works on one backend works on all of
/// them, in SQL tables, Mongo documents and Redis keys alike. Hyphens may appear anywhere. Cloning is
/// cheap (the name is shared).
///
/// # Examples
///
/// ```
/// use mq_core::QueueName;
///
/// let q = QueueName::new("emails-high-priority")?;
/// assert_eq!(q.as_str(), "emails-high-priority");
/// assert!(QueueName::new("").is_err());
/// assert!(QueueName::new("has space").is_err());
/// # Ok::<(), mq_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct QueueName(Arc<str>);

impl QueueName {
    /// Validates `name` and makes it a queue name.
    pub fn new(name: impl AsRef<str>) -> Result<Self> {
        let name = name.as_ref();
        validate(name)?;
        Ok(QueueName(Arc::from(name)))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn validate(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "must not be empty"
    } else if name.len() > MAX_QUEUE_NAME_LEN {
        "must be at most 128 characters"
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        "may only contain A-Z, a-z, 0-9, '-', '_' and '.'"
    } else {
        return Ok(());
    };
    Err(Error::InvalidQueueName {
        // A hostile name can be megabytes long: the error quotes enough to find it.
        name: name.chars().take(200).collect(),
        reason,
    })
}

validated_string_impls!(QueueName);

/// Maps the queue name a caller uses to the name stored by the backend.
///
/// Every queue operation passes its queue argument through the resolver, so `register("a")` and
/// `publish("a-production")` can address the same queue when the resolver says so.
///
/// # Examples
///
/// ```
/// use mq_core::{EnvSuffixResolver, QueueName, QueueNameResolver};
///
/// let resolver = EnvSuffixResolver::new("production")?;
/// let q = QueueName::new("emails")?;
/// assert_eq!(resolver.resolve(&q)?.as_str(), "emails-production");
/// # Ok::<(), mq_core::Error>(())
/// ```
pub trait QueueNameResolver: Send + Sync + fmt::Debug + 'static {
    /// Returns the stored name of `name`. Must be idempotent: resolving a resolved name returns it
    /// unchanged.
    fn resolve(&self, name: &QueueName) -> Result<QueueName>;
}

/// The default resolver: names are used as given.
///
/// # Examples
///
/// ```
/// use mq_core::{IdentityResolver, QueueName, QueueNameResolver};
///
/// let q = QueueName::new("emails")?;
/// assert_eq!(IdentityResolver.resolve(&q)?, q);
/// # Ok::<(), mq_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct IdentityResolver;

impl QueueNameResolver for IdentityResolver {
    fn resolve(&self, name: &QueueName) -> Result<QueueName> {
        Ok(name.clone())
    }
}

/// The original library's naming: `<name>-<env>`, idempotent.
///
/// A name that already ends with `-<env>` is returned unchanged, so both spellings address the same
/// queue. This is a suffix, not a prefix, and it works with hyphens anywhere in the name or in the
/// environment. Unlike the original, the environment is fixed when the resolver is built, not read
/// from the process environment at every call.
///
/// # Examples
///
/// ```
/// use mq_core::{EnvSuffixResolver, QueueName, QueueNameResolver};
///
/// let r = EnvSuffixResolver::new("prod-eu")?;
/// let resolved = r.resolve(&QueueName::new("order-events")?)?;
/// assert_eq!(resolved.as_str(), "order-events-prod-eu");
/// assert_eq!(r.resolve(&resolved)?, resolved);
/// # Ok::<(), mq_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct EnvSuffixResolver {
    suffix: String,
}

impl EnvSuffixResolver {
    /// A resolver that appends `-<env>`. `env` follows the queue-name rules.
    pub fn new(env: impl AsRef<str>) -> Result<Self> {
        let env = env.as_ref();
        validate(env).map_err(|_| {
            Error::invalid_option(
                "env",
                format!("{env:?} is not usable in a queue name (A-Z, a-z, 0-9, '-', '_', '.')"),
            )
        })?;
        Ok(EnvSuffixResolver {
            suffix: format!("-{env}"),
        })
    }

    /// The original's behaviour: the environment is `NODE_ENV`, or `development` when it is unset.
    ///
    /// Reads the process environment once, here, and never again.
    pub fn from_env() -> Result<Self> {
        let env = std::env::var("NODE_ENV").unwrap_or_else(|_| "development".to_owned());
        EnvSuffixResolver::new(env)
    }

    /// The environment this resolver appends.
    pub fn env(&self) -> &str {
        &self.suffix[1..]
    }
}

impl QueueNameResolver for EnvSuffixResolver {
    fn resolve(&self, name: &QueueName) -> Result<QueueName> {
        if name.as_str().ends_with(&self.suffix) && name.as_str().len() > self.suffix.len() {
            return Ok(name.clone());
        }
        QueueName::new(format!("{name}{}", self.suffix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> QueueName {
        QueueName::new(s).unwrap()
    }

    #[test]
    fn suffix_is_appended_once() {
        let r = EnvSuffixResolver::new("development").unwrap();
        assert_eq!(r.resolve(&q("a")).unwrap().as_str(), "a-development");
        assert_eq!(
            r.resolve(&q("a-development")).unwrap().as_str(),
            "a-development"
        );
    }

    #[test]
    fn hyphens_anywhere() {
        let r = EnvSuffixResolver::new("prod").unwrap();
        assert_eq!(r.resolve(&q("-a-b-")).unwrap().as_str(), "-a-b--prod");
        assert_eq!(r.resolve(&q("a-prod-b")).unwrap().as_str(), "a-prod-b-prod");
        // a name that *is* the suffix is not mistaken for a suffixed name
        assert_eq!(r.resolve(&q("-prod")).unwrap().as_str(), "-prod-prod");
    }

    #[test]
    fn overlong_result_is_an_error() {
        let r = EnvSuffixResolver::new("prod").unwrap();
        let long = "x".repeat(MAX_QUEUE_NAME_LEN);
        assert!(matches!(
            r.resolve(&q(&long)),
            Err(Error::InvalidQueueName { .. })
        ));
    }

    #[test]
    fn invalid_env_names_field() {
        let err = EnvSuffixResolver::new("a b").unwrap_err();
        assert!(err.to_string().starts_with("invalid option env"));
    }

    #[test]
    fn name_rules() {
        assert!(QueueName::new("a.b_c-D9").is_ok());
        assert!(QueueName::new("x".repeat(129)).is_err());
        assert!(QueueName::new("ü").is_err());
        let back: QueueName = serde_json::from_str("\"abc\"").unwrap();
        assert_eq!(back, q("abc"));
        assert!(serde_json::from_str::<QueueName>("\"a b\"").is_err());
    }
}
