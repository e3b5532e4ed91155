//! [`FanOutSource`]: a [`Subscription`] through a registered stream consumer.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_kinesis::Client;
use tokio_util::sync::CancellationToken;

use super::{Fetched, Opened, RecordSource, SourceError};
use crate::consumer::ShardEnv;
use crate::error::error_text;
use crate::fanout::{ConsumerArns, FanOutBatch, Subscription};
use crate::position::StartPosition;

/// Reads a shard with enhanced fan-out: the records are pushed to a [`Subscription`] that
/// re-subscribes on its own, and handed out as they come.
#[derive(Debug)]
pub(super) struct FanOutSource {
    client: Client,
    stream: String,
    shard: String,
    consumer_name: String,
    arns: ConsumerArns,
    resubscribe_interval: Duration,
    stop: CancellationToken,
    /// The subscription the shard is read from (its task ends when it is dropped).
    subscription: Option<Subscription>,
}

impl FanOutSource {
    pub(super) fn new(
        env: &ShardEnv,
        shard: &str,
        consumer_name: String,
        stop: CancellationToken,
    ) -> Self {
        FanOutSource {
            client: env.client.clone(),
            stream: env.queue.as_str().to_owned(),
            shard: shard.to_owned(),
            consumer_name,
            arns: env.shard_options.fan_out_consumers().clone(),
            resubscribe_interval: env.shard_options.get_resubscribe_interval(),
            stop,
            subscription: None,
        }
    }

    fn failed(e: &crate::Error, reopen: bool) -> SourceError {
        SourceError::Failed {
            code: e.code().map(str::to_owned),
            text: error_text(e),
            reopen,
        }
    }
}

impl From<FanOutBatch> for Fetched {
    fn from(batch: FanOutBatch) -> Self {
        Fetched {
            heartbeat: batch.records.is_empty() && !batch.ended,
            records: batch.records,
            millis_behind_latest: batch.millis_behind_latest,
            ended: batch.ended,
        }
    }
}

#[async_trait]
impl RecordSource for FanOutSource {
    fn operation(&self) -> &'static str {
        "SubscribeToShard"
    }

    fn open_operation(&self) -> &'static str {
        "the stream consumer lookup"
    }

    /// Keeps the open subscription when it has handed out exactly up to the checkpoint;
    /// subscribes after the checkpoint otherwise.
    async fn open(
        &mut self,
        checkpoint: Option<&str>,
        initial: &StartPosition,
    ) -> Result<Opened, SourceError> {
        if self
            .subscription
            .as_ref()
            .is_some_and(|s| !s.is_dead() && s.last_sequence_number() == checkpoint)
        {
            return Ok(Opened::Reading);
        }
        // one subscription per shard and consumer: close the old one first
        self.subscription = None;
        let arn = tokio::select! {
            arn = self.arns.get(&self.client, &self.stream, &self.consumer_name) => arn,
            _ = self.stop.cancelled() => return Err(SourceError::Stopped),
        };
        let arn = arn.map_err(|e| Self::failed(&e, true))?;
        let from = initial.resume(checkpoint);
        tracing::debug!(shard = %self.shard, ?from, "mq-kinesis: subscribing to the shard");
        self.subscription = Some(Subscription::start(
            self.client.clone(),
            arn,
            self.shard.clone(),
            from,
            self.resubscribe_interval,
        ));
        Ok(Opened::Reading)
    }

    async fn next(&mut self, limit: usize) -> Result<Fetched, SourceError> {
        let Some(sub) = self.subscription.as_mut() else {
            return Err(SourceError::Reopen);
        };
        let got = tokio::select! {
            biased;
            _ = self.stop.cancelled() => return Err(SourceError::Stopped),
            got = sub.next(limit) => got,
        };
        match got {
            Ok(batch) => Ok(batch.into()),
            Err(e) => {
                let reopen = if sub.is_dead() {
                    // the subscription's task is gone: open a new one
                    self.subscription = None;
                    true
                } else if e.code() == Some("ResourceNotFoundException") {
                    // the stream consumer was deleted: register it again
                    if let Some(sub) = self.subscription.take() {
                        self.arns.forget(
                            &self.client,
                            &self.stream,
                            &self.consumer_name,
                            sub.consumer_arn(),
                        );
                    }
                    true
                } else {
                    false
                };
                Err(Self::failed(&e, reopen))
            }
        }
    }
}
