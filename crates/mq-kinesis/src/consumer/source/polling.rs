//! [`PollingSource`]: `GetShardIterator`, then `GetRecords` in a loop.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::operation::get_records::{GetRecordsError, GetRecordsOutput};
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use super::{Fetched, Opened, RecordSource, SourceError};
use crate::consumer::ShardEnv;
use crate::error::error_text;
use crate::position::StartPosition;

type GetRecordsResult = Result<GetRecordsOutput, SdkError<GetRecordsError>>;

/// Spaces out the calls of one shard: each goes out at least `interval` after the one before
/// it was sent (measured when it was sent, so late wake-ups never shorten the next gap).
#[derive(Debug, Clone)]
struct Pacer {
    interval: Duration,
    last_sent: Arc<Mutex<Option<Instant>>>,
}

impl Pacer {
    async fn wait(&self) {
        let last = *self.last_sent.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(last) = last {
            tokio::time::sleep_until(last + self.interval).await;
        }
        *self.last_sent.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }
}

/// A `GetRecords` call, sent when `pacer` allows.
async fn get_records(
    client: Client,
    iterator: String,
    limit: usize,
    pacer: Pacer,
) -> GetRecordsResult {
    pacer.wait().await;
    client
        .get_records()
        .shard_iterator(iterator)
        .limit(i32::try_from(limit).unwrap_or(10_000))
        .send()
        .await
}

/// Reads a shard with shard iterators: the next `GetRecords` may start while a batch is
/// handled ([`read_ahead`](RecordSource::read_ahead)).
#[derive(Debug)]
pub(super) struct PollingSource {
    client: Client,
    stream: String,
    shard: String,
    /// The iterator of the next read; `None` once the shard ended.
    iterator: Option<String>,
    /// The read started ahead, keyed by the iterator it reads from; aborted when dropped.
    prefetched: Option<(String, AbortOnDropHandle<GetRecordsResult>)>,
    /// Spaces out the calls.
    pacer: Pacer,
}

impl PollingSource {
    pub(super) fn new(env: &ShardEnv, shard: &str) -> Self {
        PollingSource {
            client: env.client.clone(),
            stream: env.queue.as_str().to_owned(),
            shard: shard.to_owned(),
            iterator: None,
            prefetched: None,
            pacer: Pacer {
                interval: env.shard_options.get_min_read_interval(),
                last_sent: Arc::default(),
            },
        }
    }
}

#[async_trait]
impl RecordSource for PollingSource {
    fn operation(&self) -> &'static str {
        "GetRecords"
    }

    async fn open(
        &mut self,
        checkpoint: Option<&str>,
        initial: &StartPosition,
    ) -> Result<Opened, SourceError> {
        self.prefetched = None;
        self.iterator = None;
        let (kind, sequence, timestamp) = initial.resume(checkpoint).parts();
        let sent = self
            .client
            .get_shard_iterator()
            .stream_name(&self.stream)
            .shard_id(&self.shard)
            .shard_iterator_type(kind)
            .set_starting_sequence_number(sequence)
            .set_timestamp(timestamp)
            .send()
            .await;
        match sent {
            Ok(out) => match out.shard_iterator() {
                Some(it) => {
                    self.iterator = Some(it.to_owned());
                    Ok(Opened::Reading)
                }
                None => Ok(Opened::Ended),
            },
            Err(e) => Err(SourceError::Failed {
                code: e.code().map(str::to_owned),
                text: error_text(&e),
                reopen: true,
            }),
        }
    }

    async fn next(&mut self, limit: usize) -> Result<Fetched, SourceError> {
        let Some(iterator) = self.iterator.clone() else {
            return Ok(Fetched {
                ended: true,
                ..Fetched::default()
            });
        };
        let sent = match self.prefetched.take() {
            Some((from, handle)) if from == iterator => match handle.await {
                Ok(sent) => sent,
                // the read ahead panicked or was cancelled: read again
                Err(_) => {
                    get_records(self.client.clone(), iterator, limit, self.pacer.clone()).await
                }
            },
            _ => get_records(self.client.clone(), iterator, limit, self.pacer.clone()).await,
        };
        match sent {
            Ok(out) => {
                self.iterator = out.next_shard_iterator().map(str::to_owned);
                Ok(Fetched {
                    millis_behind_latest: out
                        .millis_behind_latest()
                        .and_then(|ms| u64::try_from(ms).ok()),
                    ended: self.iterator.is_none(),
                    records: out.records,
                    heartbeat: false,
                })
            }
            Err(e) => {
                let code = e.code().map(str::to_owned);
                if code.as_deref() == Some("ExpiredIteratorException") {
                    return Err(SourceError::Reopen);
                }
                Err(SourceError::Failed {
                    code,
                    text: error_text(&e),
                    reopen: false,
                })
            }
        }
    }

    fn read_ahead(&mut self, limit: usize) {
        if let Some(next) = self.iterator.clone() {
            let handle = tokio::spawn(get_records(
                self.client.clone(),
                next.clone(),
                limit,
                self.pacer.clone(),
            ));
            self.prefetched = Some((next, AbortOnDropHandle::new(handle)));
        }
    }
}
