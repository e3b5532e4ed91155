//! The database's clock, as seen from this process.
//!
//! Leases, `execute_at` and expiry are compared by many processes on many hosts: they must all
//! use one clock, the server's. The store reads the server's time (`hello.localTime`) when it
//! connects and again every [`REFRESH`], keeps the offset from this host's clock, and adds it to
//! every time it writes or compares. A host whose clock is minutes off then neither delivers
//! delayed messages early or late nor takes over leases that are still running.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use mongodb::Database;
use mongodb::bson::doc;

/// How often the offset to the server's clock is measured again.
const REFRESH: Duration = Duration::from_secs(30);

/// This host's clock corrected to the server's.
#[derive(Debug, Default)]
pub(crate) struct ServerClock {
    /// Server time minus this host's time, in milliseconds.
    offset_ms: AtomicI64,
    /// When the offset was last measured; `None` before the first measurement.
    measured: Mutex<Option<Instant>>,
    /// Added to this host's clock (tests stand in for a host whose clock is off).
    #[cfg(test)]
    pub(crate) skew: Mutex<chrono::Duration>,
}

impl ServerClock {
    /// This host's clock (plus the injected skew in tests).
    pub(crate) fn local(&self) -> DateTime<Utc> {
        #[cfg(test)]
        {
            Utc::now() + *self.skew.lock().unwrap_or_else(|e| e.into_inner())
        }
        #[cfg(not(test))]
        {
            Utc::now()
        }
    }

    fn offset(&self) -> chrono::Duration {
        chrono::Duration::milliseconds(self.offset_ms.load(Ordering::Relaxed))
    }

    /// `t`, a time of this host's clock, on the server's clock.
    pub(crate) fn to_server(&self, t: DateTime<Utc>) -> DateTime<Utc> {
        t.checked_add_signed(self.offset()).unwrap_or(t)
    }

    /// Now on the server's clock, measuring the offset again first when it is older than
    /// [`REFRESH`]. A failed measurement keeps the last offset (and is logged).
    pub(crate) async fn now(&self, db: &Database) -> DateTime<Utc> {
        let stale = {
            let mut measured = self.measured.lock().unwrap_or_else(|e| e.into_inner());
            let stale = measured.is_none_or(|at| at.elapsed() >= REFRESH);
            if stale {
                // One caller measures; the others go on with the last offset meanwhile.
                *measured = Some(Instant::now());
            }
            stale
        };
        if stale {
            self.measure(db).await;
        }
        self.to_server(self.local())
    }

    /// Reads the server's time and keeps its offset to this host's clock, taking the middle of
    /// the round trip as the moment the server read it.
    pub(crate) async fn measure(&self, db: &Database) {
        *self.measured.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        let sent = self.local();
        let reply = db.run_command(doc! { "hello": 1 }).await;
        let received = self.local();
        let server = match reply.as_ref().map(|r| r.get_datetime("localTime")) {
            Ok(Ok(t)) => t.timestamp_millis(),
            Ok(Err(_)) => {
                tracing::debug!(
                    "mq-mongo: the server does not report its time; using this host's clock"
                );
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e,
                    "mq-mongo: reading the server's time failed; keeping the last clock offset");
                return;
            }
        };
        let middle = sent + (received - sent) / 2;
        let offset = server.saturating_sub(middle.timestamp_millis());
        self.offset_ms.store(offset, Ordering::Relaxed);
    }
}
